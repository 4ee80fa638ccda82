"""A bounded HTTP client for zero-failure checks: counts every answer by status and version."""
from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from typing import List


class LoadClient(threading.Thread):
    """Sends GETs one after another, a new connection per request, until stopped or bounded."""

    def __init__(self, host: str, port: int, path: str = "/demo/1", max_requests: int = 20000,
                 max_seconds: float = 120.0, pause: float = 0.005):
        super().__init__(daemon=True)
        self.host, self.port, self.path = host, port, path
        self.max_requests, self.max_seconds, self.pause = max_requests, max_seconds, pause
        self.stopping = threading.Event()
        self.versions: Counter = Counter()
        self.failures: List[str] = []
        self.total = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stopping.is_set() and self.total < self.max_requests and time.monotonic() < deadline:
            self.total += 1
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", self.path, headers={"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status != 200:
                    self.failures.append(f"HTTP {resp.status}: {body[:120]!r}")
                else:
                    self.versions[json.loads(body).get("version")] += 1
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(self.pause)

    def finish(self) -> "LoadClient":
        self.stopping.set()
        self.join(30)
        return self
