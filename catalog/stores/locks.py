"""Consul sessions and the locks they hold (catalog.leader: gatekeeper's leader lock, the ACME issuer's)."""
from __future__ import annotations

from ..consul_client import ConsulClient


class LockStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def create_session(self, name: str, ttl: int = 10, lock_delay: int = 5) -> str:
        """A session that releases its locks when it ends or expires."""
        return self.consul.session_create(name, ttl=ttl, lock_delay=lock_delay)

    def renew(self, session: str) -> bool:
        """False when Consul no longer knows the session."""
        return self.consul.session_renew(session)

    def destroy(self, session: str) -> None:
        self.consul.session_destroy(session)

    def acquire(self, key: str, session: str, value: str) -> bool:
        return self.consul.acquire(key, session, value)

    def release(self, key: str, session: str) -> None:
        self.consul.release(key, session)
