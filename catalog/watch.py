"""Blocking-query index bookkeeping, after consul-template's watch/view.go.

Consul's X-Consul-Index only orders changes: skip a response whose index did not move, start
again from 0 when it goes backwards (a server restart or snapshot restore), and never send 0
as a wait index (that would return at once).
"""
from __future__ import annotations


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
