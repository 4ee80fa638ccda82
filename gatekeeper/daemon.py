"""`gatekeeper run`: watch every check's state with a blocking query and reconcile the gate."""
from __future__ import annotations

import logging
import threading

from catalog.retry import TRANSIENT, backoff
from catalog.watch import IndexTracker

from .gate import Gate

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, store, gate: Gate, wait: float = 30.0):
        self.store, self.gate, self.wait = store, gate, wait
        self.stopping = threading.Event()

    def run(self) -> None:
        tracker = IndexTracker()
        while not self.stopping.is_set():
            index, _ = self._wait(tracker.index)
            tracker.advance(index)
            # Reconcile on every wake-up, changed or not: a test interrupted by a Consul outage
            # is picked up again within one wait period.
            self._reconcile()
        self.gate.shutdown()

    @backoff(max_wait=10.0, what="Consul blocking query")
    def _wait(self, index: int):
        return self.store.wait_checks(index, self.wait)

    @backoff(max_wait=10.0, what="reconcile")
    def _reconcile(self) -> None:
        if not self.stopping.is_set():
            self.gate.reconcile()

    def stop(self) -> None:
        self.stopping.set()
