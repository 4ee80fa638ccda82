"""Counting nginx reloads the way nginx shows them: each reload starts a new generation of
worker processes (new pids under the same master), whatever the logs say.

The workers of one generation are forked within milliseconds of each other, but a poll can
see one before the other is forked; so generations are told apart by the workers' own start
times (from /proc), not by which poll first saw them."""
from __future__ import annotations

import os
import threading
import time
from typing import Dict, Set

SAME_GENERATION = 0.2          # seconds between the start times of workers of one reload, at most
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid) -> list:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def worker_pids(master: int) -> Set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat(entry)[1]) == master:
                pids.add(int(entry))
        except OSError:
            continue
    return pids


class WorkerGenerations(threading.Thread):
    """Polls the master's children and remembers when each new one started."""

    def __init__(self, master: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.master, self.interval = master, interval
        self.seen = worker_pids(master)
        self.started: Dict[int, float] = {}    # new worker pid -> its start time (s since boot)
        self.stopping = threading.Event()

    def _look(self) -> None:
        for pid in worker_pids(self.master) - self.seen:
            try:
                self.started[pid] = int(_stat(pid)[19]) / _TICK
            except OSError:
                continue
            self.seen.add(pid)

    def run(self) -> None:
        while not self.stopping.is_set():
            self._look()
            time.sleep(self.interval)

    def new_generations(self) -> int:
        """New generations so far, after one last look: clusters of worker start times."""
        self._look()
        count, last = 0, None
        for t in sorted(self.started.values()):
            if last is None or t - last > SAME_GENERATION:
                count += 1
            last = t
        return count

    def finish(self) -> int:
        n = self.new_generations()
        self.stopping.set()
        self.join(5)
        return n


def _loopback_hex(port: int) -> str:
    return f"0100007F:{port:04X}"


def worker_serving(master: int, server_port: int, client_port: int) -> int:
    """The worker of `master` that holds the server side of the loopback TCP connection from
    127.0.0.1:`client_port` to 127.0.0.1:`server_port` (from /proc/net/tcp and the workers'
    descriptors); 0 when none does."""
    local, remote = _loopback_hex(server_port), _loopback_hex(client_port)
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                inode = fields[9]
                break
    if inode is None:
        return 0
    target = f"socket:[{inode}]"
    for pid in worker_pids(master):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
        except OSError:
            continue
    return 0
