"""Swarm rolling updates through the gate.

Two duties, at every reconcile of a service whose instances are Swarm tasks:
- mirror the gate into each task's health (the gate marker): "open" once the instance passed
  its gate and its version takes traffic, "closed" when that stops. Swarm's updater waits for a
  healthy task before it stops the task it replaces, so an update proceeds task by task only
  as fast as new tasks pass their tests; in manual mode it waits for `gatekeeper promote`.
  The marker is written into the container by the registrator of the task's own host (from
  gatekeeper/markers/<node>/, registrator.markers): a swarm spans hosts, and a container's
  files are reached only through its own engine.
- roll an update back the moment a task of the new image fails its tests: Swarm's own rollback,
  recorded in the service's history with the failed test's summary. No failed task ever took
  traffic (its gate stayed shut); the old tasks it was to replace are still running.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

from catalog.errors import Refused
from catalog.model import PASSED, MarkerRecord, RegisteredInstance, RoutingPolicy
from catalog.stores import Stores
from catalog.validation import InvalidValue

from .. import metrics
from ..reconciler import Reconciler
from .swarm import Swarm, SwarmUnavailable, image_ref

log = logging.getLogger(__name__)

OPEN, CLOSED = "open", "closed"


def serves(policy: Optional[RoutingPolicy], version: str) -> bool:
    """The routing policy sends requests to this version (stable, or a canary with a share)."""
    return bool(policy) and (policy.stable == version or (policy.canary == version and policy.weight > 0))


def marker_state(ri: RegisteredInstance, policy: Optional[RoutingPolicy]) -> str:
    """Open once the gate is (the tests passed) and the version takes traffic. Failing health
    checks leave it open: the healer decides about those, after its grace time, one share of
    the service at a time, with a history entry, instead of Swarm at its first retries."""
    return OPEN if ri.gate_status == "passing" and serves(policy, ri.instance.version) else CLOSED


class Rollout(Reconciler):
    def __init__(self, stores: Stores, swarm: Swarm):
        self.stores, self.swarm = stores, swarm
        # service -> container id -> its marker in KV, as this leader wrote or read it; a task not
        # in it has its marker read from KV (another leader, or this one before it lost the lead,
        # may have written one), so that what KV says is what is compared
        self.written: Dict[str, Dict[str, str]] = {}
        self.read: Dict[str, Dict[str, MarkerRecord]] = {}   # node -> its markers in KV, read this pass
        self.rolled_back: set = set()             # (swarm service, update start) already rolled back

    def begin_pass(self, snapshot) -> None:
        self.read = {}

    def leadership_lost(self) -> None:
        """Another leader may write markers now: what this one wrote is read again when it leads."""
        self.written = {}

    def reconcile(self, service: str, registered: List[RegisteredInstance]) -> None:
        tasks = [ri for ri in registered if ri.instance.swarm_service]
        live = {ri.instance.container_id for ri in tasks}
        self.written[service] = {cid: st for cid, st in self.written.get(service, {}).items() if cid in live}
        if not tasks:
            return
        try:
            policy = self.stores.policies.get(service)[1]
        except InvalidValue:
            policy = None
        for ri in tasks:
            if ri.instance.gate_mirror:
                self._mirror(ri, marker_state(ri, policy), self.written[service])
        failed = [(ri, v) for ri, v in ((ri, self.stores.verdicts.get(ri.instance.id)) for ri in tasks)
                  if v is not None and v.applies_to(ri.instance) and v.final and v.state != PASSED]
        if failed:
            self._roll_back_failed_update(service, failed)

    def _in_kv(self, ri: RegisteredInstance) -> str:
        """The marker KV holds for this run of the task's container; CLOSED when none (a task
        starts without a marker: closed already)."""
        inst = ri.instance
        records = self.read.get(inst.node)
        if records is None:
            records = self.read[inst.node] = self.stores.node_records.markers(inst.node)[1]
        record = records.get(inst.id)
        return record.state if record is not None and record.applies_to(inst) else CLOSED

    def _mirror(self, ri: RegisteredInstance, state: str, written: Dict[str, str]) -> None:
        cid = ri.instance.container_id
        if cid not in written:
            written[cid] = self._in_kv(ri)
        if written[cid] == state:
            return
        self.stores.node_records.set_marker(ri.instance, state)
        log.info("%s: gate marker %s asked of %s's registrator (%s)", ri.instance.id, state, ri.instance.node,
                 "Swarm may go on with its update" if state == OPEN else "Swarm sees the task unhealthy")
        written[cid] = state

    def _roll_back_failed_update(self, service: str, failed) -> None:
        by_swarm: Dict[str, list] = {}
        for ri, verdict in failed:
            by_swarm.setdefault(ri.instance.swarm_service, []).append((ri, verdict))
        for name, items in by_swarm.items():
            try:
                svc = self.swarm.service(name)
            except SwarmUnavailable as exc:
                log.warning("%s: Swarm service %s's update not checked this pass: %s", service, name, exc)
                continue
            if svc is None or not svc.updating or (name, svc.update_started) in self.rolled_back:
                continue
            new = [(ri, v) for ri, v in items if image_ref(ri.instance.image) == svc.image]
            if not new:
                continue
            ri, verdict = new[0]
            reason = f"task {ri.instance.container_name} of {svc.image} {verdict.state}: {verdict.summary}"
            try:
                self.swarm.roll_back(svc)
            except (Refused, SwarmUnavailable) as exc:
                log.warning("%s: could not roll Swarm service %s back: %s", service, name, exc)
                continue
            self.rolled_back.add((name, svc.update_started))
            metrics.PROMOTIONS.labels(service, "update rolled back").inc()
            log.warning("%s: Swarm update of %s to %s rolled back: %s", service, name, svc.image, reason)
            self.stores.history.add(service, "update rolled back", version=ri.instance.version,
                                    image=svc.image, previous=svc.previous_image, reason=reason[:300],
                                    by="gatekeeper (swarm)")
