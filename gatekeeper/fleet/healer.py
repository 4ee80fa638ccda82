"""Self-healing: an admitted instance whose health checks (SERVICE_CHECK_HTTP/TCP, or Docker's
HEALTHCHECK) keep failing is out of traffic at once (its Consul check fails); after `after`
seconds the healer acts on it:
- a Swarm task's container is killed, so Swarm schedules a new task (a new container, tested
  through the gate like any new one);
- a plain container with a restart policy (always, unless-stopped, on-failure) is restarted;
  the restart is a new run of the container, and a verdict belongs to one run
  (catalog.model.Verdict.applies_to), so it is tested again before it takes traffic.
Both are asked of the registrator of the container's own host (registrator.actions), which
carries them out on its engine: the healer reaches containers on every host.
Bounded: `backoff` seconds doubling between restarts of one container; after `max_tries`
restarts that did not make it healthy for `settle` seconds it gives up, and says so in the
service's history, `gatekeeper status` and the gate's output in Consul; never more than `share`
of a service's instances (at least one) are being replaced at once. A container without a
restart policy is left as it is (out of traffic), and the log says why once.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from catalog.model import Instance, RegisteredInstance
from catalog.stores import Stores

from .. import metrics
from ..reconciler import Reconciler

log = logging.getLogger(__name__)

RESTART_POLICIES = ("always", "unless-stopped", "on-failure")


@dataclass(frozen=True)
class HealSettings:
    after: float = 10.0        # seconds an admitted instance fails its health checks before action
    max_tries: int = 3         # restarts of one container before giving up
    backoff: float = 5.0       # seconds before the 2nd restart; doubles each time
    settle: float = 60.0       # healthy this long after a restart: the tries start again from 0
    share: float = 0.25        # at most this share of a service's instances replaced at once


def failing_checks(ri: RegisteredInstance) -> List[str]:
    """The instance's own health checks that fail (the gate is not a health check)."""
    inst = ri.instance
    own = (inst.health_check_id, inst.docker_health_check_id)
    return [c for c in own if c in ri.checks and ri.checks[c] != "passing"]


def next_step(record: Optional[dict], now: float, s: HealSettings) -> str:
    """For a plain container that has been failing `s.after` seconds: "restart", "wait" (its
    back-off is not over) or "give up" (it was restarted max_tries times and fails again)."""
    tries = (record or {}).get("tries", 0)
    if (record or {}).get("gave_up"):
        return "gave up"
    if tries >= s.max_tries:
        return "give up"
    if tries and now - record.get("last", 0.0) < s.backoff * 2 ** (tries - 1):
        return "wait"
    return "restart"


def limit(total: int, share: float) -> int:
    return max(1, math.floor(total * share))


class Healer(Reconciler):
    def __init__(self, stores: Stores, settings: HealSettings = HealSettings(),
                 clock: Callable[[], float] = time.time):
        self.stores, self.s, self.clock = stores, settings, clock
        self.failing_since: Dict[str, float] = {}    # instance id -> first seen failing after admission
        self.acting: Dict[str, Dict[str, float]] = {}  # service -> instance id -> when we acted
        self.absent_since: Dict[str, float] = {}     # instance id with a record -> first seen unregistered
        self.told: set = set()                       # instance ids whose "left as it is" was logged
        self.waiting: Dict[str, float] = {}          # instance id -> when its back-off ends
        self.known: Dict[str, set] = {}              # service -> its instance ids at the last look
        self.records_read = (-1.0, {})               # (when, every healing record): one read per pass
        self.looked: set = set()                     # (instance id, run, asked at): restarts looked at

    def next_due(self) -> Optional[float]:
        """When (time.monotonic) a failing instance's time is up or its back-off ends; one that is
        already due but held (the share is taken) waits for the change that frees it."""
        now = self.clock()
        due = [t for t in [since + self.s.after for since in self.failing_since.values()] + list(self.waiting.values())
               if t > now]
        return time.monotonic() + (min(due) - now) if due else None

    def reconcile(self, service: str, registered: List[RegisteredInstance]) -> None:
        now = self.clock()
        ids = {ri.instance.id for ri in registered}
        for gone in self.known.get(service, set()) - ids:
            for seen in (self.failing_since, self.waiting):
                seen.pop(gone, None)
            self.told.discard(gone)
            self.looked = {seen for seen in self.looked if seen[0] != gone}
        self.known[service] = ids
        records = {iid: r for iid, r in self._records(now).items() if r.get("service") == service}
        self._forget_gone(records, ids, now)
        # An action lasts until its instance is admitted again; a killed Swarm task's replacement
        # is a new instance, so that action lasts while the service has an instance not admitted.
        pending = any(not ri.admitted for ri in registered)
        acting = {iid: t for iid, t in self.acting.get(service, {}).items()
                  if iid in ids or (pending and now - t < 120)}
        self.acting[service] = acting
        for ri in registered:
            inst = ri.instance
            failing = failing_checks(ri)
            if not failing:
                self.failing_since.pop(inst.id, None)
                self.waiting.pop(inst.id, None)
                if ri.admitted and acting.pop(inst.id, None) is not None:
                    log.info("%s: healthy and admitted again", inst.id)
                if ri.admitted and inst.id in records:
                    self._take_back_restart(inst, records[inst.id])
                self._settle(inst, ri, records.get(inst.id), now)
                continue
            if ri.gate_status != "passing" and inst.id not in self.failing_since:
                continue                             # this run was never admitted: the gate decides
            since = self.failing_since.setdefault(inst.id, now)
            if now - since < self.s.after or inst.id in acting:
                continue
            if len(acting) >= limit(len(registered), self.s.share):
                log.debug("%s: failing, but %d of %d instances of %s are being replaced already", inst.id,
                          len(acting), len(registered), service)
                continue
            if self._act(ri, failing, records.get(inst.id), now):
                acting[inst.id] = now
                self.failing_since.pop(inst.id, None)   # its next run starts a clock of its own

    def _records(self, now: float) -> Dict[str, dict]:
        """Every healing record, read once per reconcile pass (the daemon reconciles every service
        in turn) rather than once per service."""
        when, records = self.records_read
        if now - when > 0.5 or now < when:
            records = self.stores.healing.all()
            self.records_read = (now, records)
        return records

    def _put(self, instance_id: str, record: Optional[dict], *with_ops) -> None:
        """Write a record (with `with_ops`, in one transaction), and into the pass's copy too."""
        self.stores.healing.put(instance_id, record, *with_ops)
        records = self.records_read[1]
        if record is None:
            records.pop(instance_id, None)
        else:
            records[instance_id] = record

    def _forget_gone(self, records: Dict[str, dict], ids: set, now: float) -> None:
        for iid in records:
            if iid in ids:
                self.absent_since.pop(iid, None)
            elif now - self.absent_since.setdefault(iid, now) >= 600:
                self._put(iid, None)      # its container has been gone ten minutes
                self.absent_since.pop(iid, None)

    def _take_back_restart(self, inst: Instance, record: dict) -> None:
        """A restart asked for this very run is not needed once the run is healthy and admitted
        again: it healed before its host's registrator carried the restart out (that registrator
        was down, say). Looked at once per run and restart asked; after a restart the run is a
        new one and the action names the old, so nothing is taken back."""
        seen = (inst.id, inst.started, record.get("last"))
        if seen in self.looked:
            return
        taken_back = self.stores.node_records.withdraw_action(inst, "restart")
        self.looked.add(seen)                        # after the answer: a Consul error is tried again
        if taken_back:
            log.info("%s: healthy and admitted again before %s restarted it; the restart asked is taken back",
                     inst.id, inst.node)
            self.stores.history.add(inst.service, "healing: restart taken back", instance=inst.id,
                                    version=inst.version, reason=f"healthy again before {inst.node} restarted it",
                                    by="gatekeeper (healer)")

    def _settle(self, inst: Instance, ri: RegisteredInstance, record: Optional[dict], now: float) -> None:
        """Healthy again: a record is cleared once the instance has stayed healthy `settle` seconds
        after its last restart, or, after a give-up, once it is admitted again (fixed by hand)."""
        if not record:
            return
        if record.get("gave_up") and not ri.admitted:
            return
        if record.get("gave_up") or now - record.get("last", now) >= self.s.settle:
            self._put(inst.id, None)
            log.info("%s: healthy again; its restarts count from 0", inst.id)

    def _act(self, ri: RegisteredInstance, failing: List[str], record: Optional[dict], now: float) -> bool:
        inst = ri.instance
        checks = ", ".join(f"{c.rsplit(':', 1)[-1]} {ri.checks[c]}" for c in failing)
        if inst.swarm_service:
            self.stores.node_records.request_action(inst, "kill", f"healing: {checks} for {self.s.after:g} s")
            self._did(inst, "replaced", f"{checks} for {self.s.after:g} s: asked {inst.node} to kill the task, "
                                        "Swarm starts a new one")
            return True
        if inst.restart_policy not in RESTART_POLICIES:
            if inst.id not in self.told:
                log.warning("%s: unhealthy (%s) and out of traffic; container %s has no restart policy, so it is "
                            "left as it is (run it with --restart unless-stopped to have it restarted)",
                            inst.id, checks, inst.container_name)
                self.told.add(inst.id)
            return False
        step = next_step(record, now, self.s)
        self.waiting.pop(inst.id, None)
        if step == "wait":
            tries = record.get("tries", 0)
            self.waiting[inst.id] = record.get("last", now) + self.s.backoff * 2 ** (tries - 1)
            return False
        if step == "gave up":
            return False
        tries = (record or {}).get("tries", 0)
        if step == "give up":
            reason = (f"gave up healing: restarted {tries} times, still failing ({checks}); fix it and "
                      f"`docker restart {inst.container_name}`, then `gatekeeper retest {inst.id}`")
            self._put(inst.id, {**(record or {}), "gave_up": True, "reason": reason, "time": now,
                                             "service": inst.service})
            self.stores.node_records.set_gate(inst, False, reason)
            self._did(inst, "gave up", reason)
            return False
        # the try counted and the restart asked, together: a write that fails counts no restart
        self._put(inst.id, {"tries": tries + 1, "last": now, "gave_up": False, "service": inst.service,
                            "reason": f"restart {tries + 1} of {self.s.max_tries}: {checks}"},
                  self.stores.node_records.action_op(inst, "restart",
                                                     f"healing: restart {tries + 1} of {self.s.max_tries}: {checks}"))
        self._did(inst, "restarted", f"{checks} for {self.s.after:g} s: restart {tries + 1} of {self.s.max_tries} "
                                     f"asked of {inst.node}; tested again before it takes traffic")
        return True

    def _did(self, inst: Instance, action: str, reason: str) -> None:
        log.warning("%s: %s: %s", inst.id, action, reason)
        metrics.HEALINGS.labels(inst.service, action).inc()
        self.stores.history.add(inst.service, f"healing: {action}", instance=inst.id, version=inst.version,
                                reason=reason[:300], by="gatekeeper (healer)")
