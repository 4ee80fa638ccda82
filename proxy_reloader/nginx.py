"""nginx control: validate a candidate config, swap it in atomically, reload gracefully."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

from .render import Settings, config_version

log = logging.getLogger(__name__)


class NginxError(RuntimeError):
    """nginx refused a config or could not be signalled; the message carries nginx's words."""


class ReloadError(NginxError):
    """`nginx -t` accepted the config but the reload did not take effect; the old one was restored."""


def find_nginx() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def modules_path(binary: str) -> str:
    """Where the nginx at `binary` looks for dynamic modules (`nginx -V`'s --modules-path)."""
    out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stderr
    for word in out.split():
        if word.startswith("--modules-path="):
            return word.split("=", 1)[1]
    return str(Path(binary).resolve().parent.parent / "lib" / "nginx" / "modules")


class Nginx:
    def __init__(self, prefix: str, binary: Optional[str] = None, listen: str = "",
                 reload_timeout: float = 5.0):
        self.prefix = Path(prefix).resolve()
        self.binary = binary or find_nginx()
        self.listen = listen                  # where to ask which config the workers run
        self.reload_timeout = reload_timeout
        self.conf = self.prefix / "nginx.conf"
        self._retiring: set = set()           # workers from before the last reload
        self.pid_file = self.prefix / "nginx.pid"
        for d in ("logs", "tmp"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)

    def current(self) -> Optional[str]:
        try:
            return self.conf.read_text()
        except FileNotFoundError:
            return None

    def validate(self, text: str) -> Path:
        """Write `text` beside the live config and run `nginx -t` on it; return the temp path."""
        candidate = self.prefix / f".nginx.conf.{os.getpid()}.tmp"
        try:
            candidate.write_text(text)
        except OSError:                           # a full disk, say: no half-written file stays behind
            candidate.unlink(missing_ok=True)
            raise
        proc = subprocess.run([self.binary, "-t", "-q", "-p", str(self.prefix), "-c", str(candidate)],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise NginxError((proc.stderr or proc.stdout).strip() or f"nginx -t exited {proc.returncode}")
        return candidate

    def swap(self, candidate: Path) -> None:
        os.replace(candidate, self.conf)          # atomic: readers see old or new, never half

    def master_pid(self) -> Optional[int]:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def clear_stale_socket(self) -> None:
        """A killed master leaves its push socket behind, and a new one cannot bind it then.
        Only while no master runs."""
        if self.master_pid() is None:
            Settings(str(self.prefix), "").socket.unlink(missing_ok=True)

    def reload(self) -> bool:
        """SIGHUP the master: new workers take the new config, old ones finish their requests.
        Returns False when no nginx runs (the config will be read when it starts)."""
        pid = self.master_pid()
        if pid is None:
            log.warning("nginx is not running (no live pid in %s); config written for its next start", self.pid_file)
            return False
        self._retiring = active_workers(pid)
        os.kill(pid, signal.SIGHUP)
        return True

    def reopen_logs(self) -> bool:
        """SIGUSR1 the master, as `nginx -s reopen` does: the master opens its log files again by
        name (creating them, owned by the worker user), then tells each worker to do the same;
        a worker flushes its buffered access log lines to the file it had first. False when no
        nginx runs."""
        pid = self.master_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGUSR1)
        return True

    def apply(self, text: str) -> bool:
        """Validate, swap and reload when `text` differs from the live config. True if changed."""
        if text == self.current():
            return False
        self.install(self.validate(text), text)
        return True

    def install(self, candidate: Path, text: str) -> None:
        """Swap a validated candidate in and reload. A reload that does not take effect (nginx -t
        cannot see a port already in use, say) is detected through the config-version endpoint
        and the previous config is put back."""
        previous = self.current()
        self.swap(candidate)
        if self.reload() and not self.serves(config_version(text)):
            errors = self.error_log_tail()
            if previous is not None:
                revert = self.prefix / f".nginx.conf.{os.getpid()}.revert"
                revert.write_text(previous)
                self.swap(revert)
                self.reload()
            raise ReloadError(f"nginx did not take the new config within {self.reload_timeout:.0f} s; "
                              f"the previous one is back. nginx said: {errors or '(nothing in error.log)'}")

    def modules_path(self) -> str:
        return modules_path(self.binary)

    def served_version(self) -> str:
        if not self.listen:
            return ""
        try:
            with urllib.request.urlopen(f"http://{self.listen}/__proxystack/config-version", timeout=1) as r:
                return r.read().decode().strip()
        except (OSError, ValueError):
            return ""

    def serves(self, version: str) -> bool:
        """Wait until the workers answer with `version` (True), or the reload timeout (False)."""
        if not self.listen or not version:
            return True
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            # One answer from a new worker is not enough: until every worker from before the
            # reload has begun shutting down (and so stopped accepting), a new connection can
            # still reach the old config.
            if self.served_version() == version and not (self._retiring & active_workers(
                    self.master_pid() or 0)):
                return True
            time.sleep(0.01)
        return False

    def error_log_tail(self, lines: int = 3) -> str:
        try:
            text = (self.prefix / "logs" / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return " | ".join(l.strip() for l in text.splitlines()[-lines:] if l.strip())


def active_workers(master: int) -> set:
    """The master's workers that still accept connections. nginx retitles a worker that is
    finishing after a reload "nginx: worker process is shutting down". Empty when the
    processes cannot be seen (another pid namespace): then only the config version is checked."""
    pids = set()
    if not master:
        return pids
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != master:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        if title.startswith("nginx: worker process") and "shutting down" not in title:
            pids.add(int(entry))
    return pids
