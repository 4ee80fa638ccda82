"""Leader election through a Consul session lock, so two daemons never both act: gatekeeper's
(`gatekeeper/leader`) and proxy-reloader's certificate issuer (`certificates/acme/leader`).

The leader holds its key with a session (TTL 10 s, renewed every 3 s). When it dies the session
expires, the lock is released, and after Consul's lock-delay the other daemon acquires it. A
leader that cannot renew steps down at once.
"""
from __future__ import annotations

import logging
import socket
import threading

from .kv_layout import LEADER
from .retry import TRANSIENT
from .stores import LockStore

log = logging.getLogger(__name__)


class LeaderLock:
    def __init__(self, locks: LockStore, identity: str = "", ttl: int = 10, lock_delay: int = 5, key: str = LEADER):
        self.locks, self.key = locks, key
        self.identity = identity or f"gatekeeper@{socket.gethostname()}"
        self.ttl, self.lock_delay = ttl, lock_delay
        self.session = None
        self.is_leader = threading.Event()
        self.lost = threading.Event()

    def try_acquire(self) -> bool:
        """One attempt; True when this daemon now leads. A daemon waiting its turn keeps its session
        renewed, and makes a new one if it expired meanwhile (Consul drops a session not renewed
        within twice its TTL, and acquiring with it would be refused as an invalid session)."""
        if self.session is not None and not self.is_leader.is_set():
            try:
                if not self.locks.renew(self.session):
                    self.session = None
            except TRANSIENT:
                self.session = None
                raise
        if self.session is None:
            self.session = self.locks.create_session(self.identity, ttl=self.ttl, lock_delay=self.lock_delay)
        try:
            acquired = self.locks.acquire(self.key, self.session, self.identity)
        except TRANSIENT:
            self.session = None        # e.g. "invalid session" after a Consul restart: start afresh
            raise
        if acquired:
            if not self.is_leader.is_set():
                log.info("%s is now the leader", self.identity)
            self.is_leader.set()
            self.lost.clear()
            return True
        return False

    def renew(self) -> bool:
        """Keep the session alive; on failure step down (another daemon may take over)."""
        if self.session is None:
            return False
        try:
            ok = self.locks.renew(self.session)
        except TRANSIENT as exc:
            log.warning("could not renew the leader session: %s", exc)
            ok = False
        if not ok:
            self.step_down("session lost")
        return ok

    def step_down(self, why: str) -> None:
        if self.is_leader.is_set():
            log.warning("%s steps down: %s", self.identity, why)
        self.is_leader.clear()
        self.lost.set()
        self.session = None

    def release(self) -> None:
        if self.session:
            try:
                self.locks.release(self.key, self.session)
                self.locks.destroy(self.session)
            except TRANSIENT:
                pass
        self.is_leader.clear()
        self.session = None
