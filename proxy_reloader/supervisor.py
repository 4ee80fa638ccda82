"""`--exec` mode: proxy-reloader runs nginx as its own child, like consul-template's exec.

nginx runs in the foreground (`daemon off`), is restarted with back-off if it dies, and is
asked to finish gracefully (SIGQUIT) when proxy-reloader stops.

A proxy-reloader killed outright (SIGKILL, the OOM killer) leaves its nginx serving: it runs in its
own session, so traffic goes on. The next proxy-reloader on the same prefix finds that master
through nginx.pid and takes it over instead of starting a second nginx that could not bind the
ports: it watches, reloads and stops it as if it were its own child.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from .nginx import Nginx
from .render import config_version

log = logging.getLogger(__name__)

# Restarts wait 0.5 s, then twice as long after each quick death, at most 10 s; an nginx that
# ran this long was healthy, so its next death is waited on 0.5 s again.
FIRST_DELAY, MAX_DELAY = 0.5, 10.0
STEADY = 30.0


class NginxChild:
    def __init__(self, nginx: Nginx):
        self.nginx = nginx
        self.proc = None
        self.started = 0.0
        self.stopping = threading.Event()
        self.restarts = 0
        self.spawning = threading.Lock()     # a restart and stop() never cross: no nginx outlives a stop

    def start(self) -> None:
        if not self._adopt():
            self._spawn()
        threading.Thread(target=self._watch, name="nginx-child", daemon=True).start()

    def _spawn(self) -> None:
        self.nginx.clear_stale_socket()
        # Its own process group: if the master dies, its orphaned workers (still holding the
        # listening socket) can be found and told to finish, and nothing else is touched.
        self.proc = subprocess.Popen([self.nginx.binary, "-p", str(self.nginx.prefix), "-c", str(self.nginx.conf),
                                      "-g", "daemon off;"], stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        log.info("nginx started as a child (pid %d)", self.proc.pid)

    def _adopt(self) -> bool:
        """Take over the master a killed proxy-reloader left on this prefix, if one runs. It
        loads the config just written when it serves another one (a reload, as any change)."""
        pid = self.nginx.master_pid()
        if pid is None or not _master_of(pid, str(self.nginx.prefix)):
            return False
        self.proc = AdoptedMaster(pid)
        self.started = time.monotonic()
        log.info("nginx already runs on this prefix (master pid %d, left by a proxy-reloader before this one); "
                 "taking it over", pid)
        wanted = config_version(self.nginx.current() or "")
        if self.nginx.served_version() != wanted:
            self.nginx.reload()
            if not self.nginx.serves(wanted):
                log.warning("the nginx taken over does not serve the config on disk yet (%s)",
                            self.nginx.error_log_tail() or "nothing in error.log")
        return True

    def _finish_orphans(self, pgid: int, timeout: float = 10.0) -> None:
        """Workers outlive a killed master and keep the port: ask them to finish (SIGQUIT)."""
        try:
            os.killpg(pgid, signal.SIGQUIT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _watch(self) -> None:
        delay = FIRST_DELAY
        while not self.stopping.is_set():
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - self.started >= STEADY:
                delay = FIRST_DELAY
            log.error("nginx exited unexpectedly (%s); restarting in %.1f s",
                      "code unknown: taken over, not a child" if code is None else f"code {code}", delay)
            self._finish_orphans(self.proc.pid)
            while not self.stopping.wait(delay):
                delay = min(delay * 2, MAX_DELAY)
                try:
                    with self.spawning:
                        if self.stopping.is_set():
                            return
                        self._spawn()
                except OSError as exc:      # no memory or processes left to fork, the binary away
                    log.error("could not start nginx (%s); trying again in %.1f s", exc, delay)
                    continue
                self.restarts += 1
                break

    def stop(self, timeout: float = 30.0) -> None:
        with self.spawning:
            self.stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)       # finish in-flight requests, then exit
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self._finish_orphans(self.proc.pid)


class AdoptedMaster:
    """An nginx master that is not this process's child, with the part of Popen's interface
    the supervision uses. Its exit status cannot be read: `wait` returns None."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        return None if _alive(self.pid) else 0

    def wait(self, timeout: float = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while _alive(self.pid):
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"nginx master {self.pid}", timeout)
            time.sleep(0.1)
        return None

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its new parent to collect it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _master_of(pid: int, prefix: str) -> bool:
    """Whether `pid` is an nginx master started on `prefix` (a pid file can outlive its process,
    and the number be someone else's by now)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "nginx: master process" in title and f" -p {prefix} " in f"{title} " and _alive(pid)
