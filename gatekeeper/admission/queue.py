"""Who is tested next: the instance seen last, first tests before re-verifications.

With a backlog of thousands (a bulk import of instances, a verdict store wiped or restored), a
queue in arrival order would have the container an operator just started wait for every one of
them. Newest first, it waits only for the tests already running.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
from typing import Callable, List, Tuple

log = logging.getLogger(__name__)

FIRST, REVERIFY = 0, 1          # priorities: lower runs first


class NewestFirst:
    """`workers` threads, each taking the most recently submitted job of the highest priority."""

    def __init__(self, workers: int, name: str = "test"):
        self._jobs: List[Tuple[int, int, Callable, tuple]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
                         for n in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, priority: int, fn: Callable, *args) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("the test queue is shut down")
            heapq.heappush(self._jobs, (priority, -next(self._order), fn, args))
            self._ready.notify()

    def waiting(self) -> int:
        """Jobs not started yet."""
        with self._ready:
            return len(self._jobs)

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                _, _, fn, args = heapq.heappop(self._jobs)
            try:
                fn(*args)
            except Exception:                   # a bug must not take a worker away
                log.exception("test job failed unexpectedly")

    def shutdown(self, wait: bool = False) -> None:
        """Drop the jobs not started; with `wait`, first let every submitted job finish."""
        if wait:
            with self._ready:
                while self._jobs:
                    self._ready.wait(0.01)
        with self._ready:
            self._closed = True
            self._jobs.clear()
            self._ready.notify_all()
        if wait:
            for t in self._threads:
                t.join()
