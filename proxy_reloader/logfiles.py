"""nginx's own logs, rotated by size: PREFIX/logs/access.log grows by some 200 bytes a request,
and nothing else in the stack rotates it (nor error.log).

Every `every` seconds, each log larger than `max_size` becomes NAME.1 (NAME.1 becomes NAME.2 and so
on; the one past `keep` is deleted), then nginx's master is told to reopen its logs (SIGUSR1, what
`nginx -s reopen` sends). The master opens NAME again, owned by the worker user, and tells the
workers, which write out their buffered lines first and then open it by its name themselves. Until
then they go on writing the renamed file, so no line is lost: only the deleted oldest file goes.

A worker that cannot reach the logs folder (nginx started as root runs its workers as nobody, and
the prefix must be reachable by them) keeps writing NAME.1; that is said in proxy-reloader's log,
and nothing is lost either. Without a running nginx to tell, nothing is renamed.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Dict, List

log = logging.getLogger(__name__)

LOGS = ("access.log", "error.log")
CHECK_EVERY = 10.0                     # seconds between two looks at the logs' sizes
DEFAULT_MAX_SIZE = "100m"
DEFAULT_KEEP = 3
MAX_KEEP = 100
# Workers reopen within moments of the signal; a renamed log written to later than this after
# its rotation is still some worker's log.
REOPEN_GRACE = 5.0

_SIZE = re.compile(r"([0-9]{1,12})([kmg]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
SIZE_RULE = "a whole number of bytes, or of k, m or g (1024-based), such as 100m; 0 turns rotation off"


def parse_size(raw: str) -> int:
    """'100m' -> 104857600 bytes; ValueError with the rule when it is not a size."""
    m = _SIZE.fullmatch(raw.strip())
    if not m:
        raise ValueError(f"{raw!r} is not a size: {SIZE_RULE}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


class LogRotation:
    """Rotates `nginx`'s logs (its prefix's logs/ folder) by size, on a thread of its own."""

    def __init__(self, nginx, max_size: int, keep: int = DEFAULT_KEEP, every: float = CHECK_EVERY):
        self.nginx = nginx                   # proxy_reloader.nginx.Nginx: prefix, master_pid, reopen_logs
        self.folder = Path(nginx.prefix) / "logs"
        self.max_size, self.keep, self.every = max_size, keep, every
        self.rotations = 0
        self.rotated_at: Dict[str, float] = {}   # per log: when it was last renamed (wall clock)
        self.stopping = threading.Event()
        self._unsignalled = False            # said once that a full log waits for an nginx to tell

    def start(self) -> "LogRotation":
        threading.Thread(target=self._loop, name="nginx-logs", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.check()
            except Exception:                # rotating must never stop the proxy
                log.exception("rotating nginx's logs failed")

    def check(self) -> List[str]:
        """Rotate each log larger than max_size and tell nginx; the names rotated."""
        for name in LOGS:
            self._still_written(name)
        full = [name for name in LOGS if self._size(name) > self.max_size]
        if not full:
            return []
        if self.nginx.master_pid() is None:
            # Renamed now, a running nginx we cannot signal would write on into NAME.1 and later
            # into a deleted file; a stopped one writes nothing. Either way: wait.
            if not self._unsignalled:
                log.warning("%s over %d bytes, but no running nginx to tell (no live pid in %s): not rotated",
                            " and ".join(full), self.max_size, self.nginx.pid_file)
                self._unsignalled = True
            return []
        self._unsignalled = False
        rotated = [name for name in full if self._rotate(name)]
        if rotated:
            self.nginx.reopen_logs()
            self.rotations += 1
            log.info("rotated nginx's %s (over %d bytes, %d kept)", " and ".join(rotated), self.max_size, self.keep)
        return rotated

    def _size(self, name: str) -> int:
        try:
            return (self.folder / name).stat().st_size
        except FileNotFoundError:
            return 0

    def _rotate(self, name: str) -> bool:
        """NAME -> NAME.1, NAME.1 -> NAME.2, ...; deletes what is past `keep` (an earlier, larger
        keep's files too). Oldest first, so no file is renamed over one that is still to move."""
        try:
            for number, path in self._numbered(name):
                if number >= self.keep:
                    path.unlink()
            for number, path in self._numbered(name):
                path.replace(self.folder / f"{name}.{number + 1}")
            (self.folder / name).replace(self.folder / f"{name}.1")
        except OSError as exc:
            log.warning("could not rotate nginx's %s: %s", self.folder / name, exc)
            return False
        self.rotated_at[name] = time.time()
        return True

    def _numbered(self, name: str):
        """(number, path) of NAME.1, NAME.2, ..., highest first."""
        found = []
        for path in self.folder.glob(f"{name}.*"):
            suffix = path.name[len(name) + 1:]
            if suffix.isdigit():
                found.append((int(suffix), path))
        return sorted(found, reverse=True)

    def _still_written(self, name: str) -> None:
        """Say so when a worker still writes NAME.1 well after it was told to reopen NAME."""
        at = self.rotated_at.get(name)
        if at is None:
            return
        try:
            written = (self.folder / f"{name}.1").stat().st_mtime
        except FileNotFoundError:
            return
        if written > at + REOPEN_GRACE:
            log.error("nginx still writes %s.1 after it was told to reopen %s: a worker could not open it "
                      "(nginx's error log says why; the logs folder must be reachable by nginx's worker user); "
                      "nothing is lost, but that log is not rotated", self.folder / name, name)
            del self.rotated_at[name]
