"""`--exec` mode: proxy-reloader runs nginx as its own child, like consul-template's exec.

nginx runs in the foreground (`daemon off`), is restarted with back-off if it dies, and is
asked to finish gracefully (SIGQUIT) when proxy-reloader stops.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

from .nginx import Nginx

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
            log.error("nginx exited unexpectedly (code %s); restarting in %.1f s", code, delay)
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
