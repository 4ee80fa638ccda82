"""A unix-socket relay in front of the real Docker Engine that holds back the answer to the
container list (`GET /containers/json`) for a while, after the Engine has computed it: a sync
that starts then works on a list taken before anything the test starts meanwhile, while the
event stream flows through at once. Real Engine, real events; only the timing is stretched."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path


class SlowListDocker:
    def __init__(self, path: Path, delay: float, upstream: str = "/var/run/docker.sock"):
        self.path, self.delay, self.upstream = str(path), delay, upstream
        self.lists_held = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> "SlowListDocker":
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.upstream)
            held = threading.Event()          # the next answer on this connection is a list
            threading.Thread(target=self._pump, args=(client, up, held, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, held, False), daemon=True).start()

    def _pump(self, src, dst, held, requests) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if requests and data.startswith(b"GET ") and b"/containers/json" in data.split(b"\r\n", 1)[0]:
                    held.set()
                elif not requests and held.is_set():
                    held.clear()
                    self.lists_held += 1
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
