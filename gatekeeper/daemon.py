"""`gatekeeper run`: lead (or wait to lead), watch Consul, run the reconcilers.

Two blocking-query watches wake the daemon: every check's state (new instances, gates, health)
and everything under `gatekeeper/` in KV (policies, retest requests, default test images). Each
pass reads the catalog once, and the KV records read per service once (PASS_READS), and hands
the catalog to the reconcilers (gatekeeper.reconciler). Only the leader acts; a follower just
keeps trying for the lock.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Sequence

from catalog.kv_layout import ANALYSIS, DEFAULT_TESTS, POLICIES, ROLLBACKS
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

    def run(self) -> None:
        for w in (Watch("checks", self.instances.wait_checks, self.dirty.set, self.wait, self.stopping),
                  Watch("kv", self.policies.wait, self.dirty.set,
                        self.wait, self.stopping)):
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
                self.dirty.clear()
                try:
                    self._reconcile()
                except TRANSIENT as exc:
                    log.warning("reconcile failed, will retry: %s", exc)
                next_reconcile = time.monotonic() + self.wait
                due = next_due(self.reconcilers)   # an unhealthy canary's grace ends, an analysis step
                if due is not None:     # never sooner than 0.1 s: a decision that did not happen
                    next_reconcile = min(next_reconcile, max(due + 0.01, time.monotonic() + 0.1))
        self.shutdown()

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
