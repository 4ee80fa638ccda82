"""nginx control: validate a candidate config, swap it in atomically, reload gracefully."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


class NginxError(RuntimeError):
    """nginx refused a config or could not be signalled; the message carries nginx's words."""


def find_nginx() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    def __init__(self, prefix: str, binary: Optional[str] = None):
        self.prefix = Path(prefix).resolve()
        self.binary = binary or find_nginx()
        self.conf = self.prefix / "nginx.conf"
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
        candidate.write_text(text)
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

    def reload(self) -> bool:
        """SIGHUP the master: new workers take the new config, old ones finish their requests.
        Returns False when no nginx runs (the config will be read when it starts)."""
        pid = self.master_pid()
        if pid is None:
            log.warning("nginx is not running (no live pid in %s); config written for its next start", self.pid_file)
            return False
        os.kill(pid, signal.SIGHUP)
        return True

    def apply(self, text: str) -> bool:
        """Validate, swap and reload when `text` differs from the live config. True if changed."""
        if text == self.current():
            return False
        self.swap(self.validate(text))
        self.reload()
        return True
