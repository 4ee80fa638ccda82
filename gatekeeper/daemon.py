"""`gatekeeper run`: lead (or wait to lead), watch Consul, run the reconcilers.

Two blocking-query watches wake the daemon: every check's state (new instances, gates, health)
and everything under `gatekeeper/` in KV (policies, retest requests, default test images). Each
pass reads the catalog once, and the KV records read per service once (PASS_READS), and hands
the catalog to the reconcilers (gatekeeper.reconciler). Only the leader acts; a follower just
keeps trying for the lock.

A pass over a large catalog is long (about 1.5 s at 10,000 instances), so two things do not wait
for it: a few instances newly registered are read at once, service by service, and shown to
the reconcilers (`arrived`: the gate starts their tests); and after a long pass the daemon
rests as long again before the next, so that a backlog's passes back to back do not take the
machine (and Consul) from the proxies.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Optional, Sequence

from catalog.kv_layout import ANALYSIS, DEFAULT_TESTS, POLICIES, ROLLBACKS
from catalog.model import GATE_SUFFIX
from catalog.retry import TRANSIENT, backoff
from catalog.schema import SchemaRefusal
from catalog.stores import InstanceStore, PolicyStore
from catalog.watch import Watch

from catalog.leader import LeaderLock
from .reconciler import Reconciler, next_due, run_pass

log = logging.getLogger(__name__)

RENEW_EVERY = 3.0
# What the reconcilers read per service at every pass (a policy several times, a rollback request,
# a default test image, an analysis): read once per pass, a recursive read of each prefix.
PASS_READS = (POLICIES, ROLLBACKS, DEFAULT_TESTS, ANALYSIS)
# New instances seen at once that are read and shown before the pass; more is a bulk import,
# which the pass takes (reading each service's instances would cost more than the pass).
ARRIVALS_AT_ONCE = 32


class Daemon:
    def __init__(self, instances: InstanceStore, policies: PolicyStore, reconcilers: Sequence[Reconciler],
                 leader: LeaderLock, wait: float = 30.0, on_lead: Optional[Callable[[], object]] = None):
        self.instances, self.policies = instances, policies
        self.reconcilers, self.leader, self.wait = list(reconcilers), leader, wait
        # called each time it becomes the leader, before it acts (catalog.schema.claim): raising
        # SchemaRefusal makes it refuse to act, let go of the lock and stop, saying why
        self.on_lead = on_lead
        self.refused = ""
        self.stopping = threading.Event()
        self.dirty = threading.Event()
        self.checks = Watch("checks", self.instances.wait_checks, self._checks_changed, self.wait, self.stopping)
        self.gates: Optional[Dict[str, str]] = None     # every gate check's instance id -> its service
        self.rest_until = 0.0                          # no pass before this (time.monotonic)

    def run(self) -> None:
        for w in (self.checks, Watch("kv", self.policies.wait, self.dirty.set, self.wait, self.stopping)):
            w.start()
        next_renew = next_reconcile = 0.0
        while not self.stopping.is_set():
            if not self.leader.is_leader.is_set():
                if not self._try_lead():
                    self.stopping.wait(1.0)
                    continue
                next_renew, next_reconcile = time.monotonic() + RENEW_EVERY, 0.0
            if time.monotonic() >= next_renew:
                if not self.leader.renew():
                    for r in self.reconcilers:
                        r.leadership_lost()
                    continue
                next_renew = time.monotonic() + RENEW_EVERY
            # Reconcile on change, and at least every `wait` seconds: a test cut short by an
            # outage, or a re-verification that falls due, is picked up without a change.
            # (a decision that falls due sooner than the half-second lease check wakes it on time)
            wake = max(0.0, min(0.5, next_reconcile - time.monotonic()))
            if self.dirty.wait(timeout=wake) or time.monotonic() >= next_reconcile:
                rest = self.rest_until - time.monotonic()
                if rest > 0:                   # after a long pass (the lease is still renewed meanwhile)
                    self.stopping.wait(min(rest, 0.5))
                    continue
                self.dirty.clear()
                began = time.monotonic()
                try:
                    self._reconcile()
                except TRANSIENT as exc:
                    log.warning("reconcile failed, will retry: %s", exc)
                self.rest_until = 2 * time.monotonic() - began
                next_reconcile = time.monotonic() + self.wait
                due = next_due(self.reconcilers)   # an unhealthy canary's grace ends, an analysis step
                if due is not None:     # never sooner than 0.1 s: a decision that did not happen
                    next_reconcile = min(next_reconcile, max(due + 0.01, time.monotonic() + 0.1))
        self.shutdown()

    def _checks_changed(self) -> None:
        self.dirty.set()
        try:
            self._show_arrivals(self.checks.last_data or [])
        except Exception as exc:           # the pass that follows sees them anyway
            log.warning("could not read the instances just registered (%s); the next pass takes them", exc)

    def _show_arrivals(self, checks: list) -> None:
        """The instances whose gate check appeared since the last answer, read (one request per
        service) and shown to the reconcilers before the pass."""
        gates = {c["ServiceID"]: c.get("ServiceName", "") for c in checks
                 if c.get("ServiceID") and c.get("CheckID") == c["ServiceID"] + GATE_SUFFIX}
        before, self.gates = self.gates, gates
        if before is None or not self.leader.is_leader.is_set():
            return
        new = {iid: service for iid, service in gates.items() if iid not in before}
        if not new or len(new) > ARRIVALS_AT_ONCE:
            return
        for service in sorted(set(new.values())):
            arrived = [ri for ri in self.instances.of(service) if ri.instance.id in new]
            if arrived:
                log.debug("%s: %d new instance(s), shown before the pass", service, len(arrived))
                for r in self.reconcilers:
                    r.arrived(service, arrived)

    def shutdown(self) -> None:
        for r in self.reconcilers:
            r.shutdown()
        self.leader.release()

    def _try_lead(self) -> bool:
        try:
            if not self.leader.try_acquire():
                return False
        except TRANSIENT as exc:
            log.warning("Consul unreachable while seeking leadership: %s", exc)
            self.leader.session = None
            return False
        if self.on_lead is None:
            return True
        try:
            self.on_lead()
            return True
        except SchemaRefusal as exc:
            log.error("%s", exc)
            self.refused = str(exc)
            self.stopping.set()           # run() ends
        except TRANSIENT as exc:
            log.warning("could not check the KV layout's schema version (%s); letting go of the lock to try again",
                        exc)
        self.leader.release()             # never lead without the check
        return False

    @backoff(max_wait=10.0, attempts=3, what="reconcile")
    def _reconcile(self) -> None:
        if not self.stopping.is_set() and self.leader.is_leader.is_set():
            with self.instances.consul.reads_of_one_pass(PASS_READS):
                run_pass(self.instances.all(), self.reconcilers)

    def stop(self) -> None:
        self.stopping.set()
