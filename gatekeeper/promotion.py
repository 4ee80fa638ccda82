"""Routing-policy changes: automatic promotion after a pass, promote, and draining old versions.

Policies live in Consul KV and are written with check-and-set, so two writers (the daemon and
an operator, or two operators) never silently overwrite each other.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import Callable, Optional

import docker
import docker.errors

from catalog.model import AUTO, MANUAL, PASSED, Instance, RoutingPolicy
from catalog.validation import InvalidValue

log = logging.getLogger(__name__)

HISTORY = "gatekeeper/history/"


class PromotionError(RuntimeError):
    """A promotion request that cannot be carried out; the message says why and what to do."""


class Conflict(PromotionError):
    pass


def update_policy(store, service: str, change: Callable[[RoutingPolicy], Optional[RoutingPolicy]],
                  attempts: int = 5) -> Optional[RoutingPolicy]:
    """Read-modify-write with check-and-set; `change` returns None for "nothing to do"."""
    for _ in range(attempts):
        cas, current = store.policy(service)
        new = change(current or RoutingPolicy(service=service))
        if new is None:
            return current
        new = replace(new, updated=time.time())
        if store.put_policy(new, cas):
            return new
    raise Conflict(f"the routing policy of {service} kept changing under us; try again")


def record_history(store, service: str, event: str, **details) -> None:
    entry = {"time": time.time(), "event": event, **details}
    key = f"{HISTORY}{service}/{time.time_ns()}"
    store.kv_put(key, json.dumps(entry, sort_keys=True))


class Promoter:
    """Acts on admitted instances: auto mode makes a passed version stable and drains the rest."""

    def __init__(self, store, docker_client: Optional[docker.DockerClient] = None,
                 drain_seconds: float = 10.0, stop_old: bool = True):
        self.store = store
        self.docker = docker_client
        self.drain_seconds = drain_seconds
        self.stop_old = stop_old

    def admitted(self, inst: Instance) -> None:
        try:
            before = self.store.policy(inst.service)[1]
        except InvalidValue as exc:
            log.error("%s: routing policy is invalid (%s); not promoting until it is fixed", inst.service, exc)
            return
        mode = before.mode if before else AUTO

        def change(p: RoutingPolicy) -> Optional[RoutingPolicy]:
            if p.stable == inst.version or p.canary == inst.version:
                return None
            if p.mode == MANUAL and p.stable:
                return replace(p, canary=inst.version, weight=0)
            return p.promoted(inst.version)

        after = update_policy(self.store, inst.service, change)
        if after is None or (before and after.stable == before.stable and after.canary == before.canary):
            return
        if mode == MANUAL and before and before.stable:
            log.info("%s: %s passed and is now the canary (weight 0); `gatekeeper promote %s` to make it stable",
                     inst.service, inst.version, inst.service)
            record_history(self.store, inst.service, "canary", version=inst.version, by="gatekeeper")
            return
        log.info("%s: %s passed and is now stable (was %s)", inst.service, inst.version,
                 before.stable if before and before.stable else "none")
        record_history(self.store, inst.service, "promoted", version=inst.version,
                       previous=before.stable if before else "", by="gatekeeper (auto)")
        self.drain_later(inst.service, inst.version)

    def drain_later(self, service: str, stable: str) -> None:
        """After the drain period, stop the containers of admitted instances of other versions."""
        if not self.stop_old or self.docker is None:
            return
        t = threading.Timer(self.drain_seconds, self._stop_old, args=(service, stable))
        t.daemon = True
        t.start()

    def _stop_old(self, service: str, stable: str) -> None:
        try:
            _, policy = self.store.policy(service)
            if policy is None or policy.stable != stable:
                return                                  # promoted again meanwhile
            for ri in self.store.instances(service):
                inst = ri.instance
                if inst.version in (policy.stable, policy.canary):
                    continue
                verdict = self.store.verdict(inst.id)
                if not verdict or verdict.state != PASSED or not verdict.applies_to(inst):
                    continue                            # failed builds stay up for inspection
                try:
                    self.docker.containers.get(inst.container_id).stop(timeout=10)
                    log.info("%s: stopped %s (%s) after draining", service, inst.container_name, inst.version)
                except docker.errors.NotFound:
                    pass
        except Exception:
            log.exception("%s: stopping old instances failed", service)


def promote(store, service: str) -> RoutingPolicy:
    """Make the canary stable (operator command)."""
    def change(p: RoutingPolicy) -> RoutingPolicy:
        if not p.canary:
            raise PromotionError(f"{service} has no canary to promote (stable is {p.stable or 'not set'})")
        return p.promoted(p.canary)

    before = store.policy(service)[1]
    if before is None:
        raise PromotionError(f"unknown service {service!r}: no routing policy yet "
                             "(a service gets one when its first instance passes its tests)")
    after = update_policy(store, service, change)
    record_history(store, service, "promoted", version=after.stable, previous=before.stable, by="operator")
    return after
