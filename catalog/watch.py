"""Blocking-query index bookkeeping, after consul-template's watch/view.go.

Consul's X-Consul-Index only orders changes: skip a response whose index did not move, start
again from 0 when it goes backwards (a server restart or snapshot restore), and never send 0
as a wait index (that would return at once).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .retry import backoff

log = logging.getLogger(__name__)


class IndexTracker:
    def __init__(self) -> None:
        self.index = 0

    def advance(self, new_index: int) -> bool:
        """Record the index of a response; True when the data may have changed."""
        new_index = int(new_index)
        if new_index <= 0:
            self.index = 1           # never wait on 0: it returns at once, a busy loop
            return True
        if new_index < self.index:
            self.index = 0           # went backwards: reset, and treat the data as new
            return True
        changed = new_index != self.index
        self.index = new_index
        return changed


class Watch(threading.Thread):
    """One blocking-query loop; calls `changed()` whenever its data may have changed.

    `fetch(index, wait)` returns (index, data); equal data under a new index is not a change.
    """

    def __init__(self, name: str, fetch: Callable[[int, float], tuple], changed: Callable[[], None],
                 wait: float, stopping: threading.Event):
        super().__init__(name=f"watch-{name}", daemon=True)
        self.fetch, self.changed, self.wait, self.stopping = fetch, changed, wait, stopping
        self.tracker = IndexTracker()
        self.last_data = None
        self.disrupted_at = 0.0      # monotonic time of the last failed query or index reset
        self.failed_at, self.last_error, self.retry_in = 0.0, "", 5.0     # the handler's last failure

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                index, data = self._fetch()
            except Exception as exc:        # never let one odd answer end the watch
                log.error("%s: %s: %s; retrying in 5 s", self.name, type(exc).__name__, exc)
                self.disrupted_at = time.monotonic()
                self.stopping.wait(5.0)
                continue
            if int(index) < self.tracker.index:
                self.disrupted_at = time.monotonic()     # Consul restarted or restored a snapshot
            if self.tracker.advance(index) and (data != self.last_data or self.failed_at):
                self.last_data = data
                self._act()

    def _act(self) -> None:
        """Call the handler; one that fails (a disk full) is called again after a wait that
        doubles up to a minute, the next query answering at once. Its traceback is logged when
        the error is new, a line otherwise."""
        try:
            self.changed()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.retry_in = min(self.retry_in * 2, 60.0) if self.failed_at else 5.0
            if error != self.last_error:
                log.exception("%s: acting on the change failed; trying again in %.0f s", self.name, self.retry_in)
            else:
                log.error("%s: acting on the change failed again (%s); trying again in %.0f s", self.name, error,
                          self.retry_in)
            self.failed_at, self.last_error = time.monotonic(), error
            self.tracker.index = 0
            self.stopping.wait(self.retry_in)
            return
        if self.failed_at:
            log.info("%s: acting on the change works again", self.name)
        self.failed_at, self.last_error, self.retry_in = 0.0, "", 5.0

    @backoff(max_wait=10.0, what="Consul blocking query")
    def _fetch(self):
        try:
            return self.fetch(self.tracker.index, self.wait)
        except Exception:
            self.disrupted_at = time.monotonic()
            raise
