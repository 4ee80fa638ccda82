"""Counting nginx reloads the way nginx shows them: each reload starts a new generation of
worker processes (new pids under the same master), whatever the logs say."""
from __future__ import annotations

import os
import threading
import time
from typing import Set


def worker_pids(master: int) -> Set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(entry))
    return pids


class WorkerGenerations(threading.Thread):
    """Polls the master's children; every poll that finds pids never seen before is one new
    generation (a reload, or a restart of a worker)."""

    def __init__(self, master: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.master, self.interval = master, interval
        self.seen = worker_pids(master)
        self.generations = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            now = worker_pids(self.master)
            if now - self.seen:
                self.generations += 1
                self.seen |= now
            time.sleep(self.interval)

    def new_generations(self) -> int:
        """New generations so far, after one last look."""
        now = worker_pids(self.master)
        return self.generations + (1 if now - self.seen else 0)

    def finish(self) -> int:
        n = self.new_generations()
        self.stopping.set()
        self.join(5)
        return n
