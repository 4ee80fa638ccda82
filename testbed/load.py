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


class KeepAliveLoad:
    """`connections` clients, each on one kept-alive connection at `rate` requests/s, that never
    retry: a connection closed under a request is a failure, as it is for a pooled client that
    does not resend. Bounded in time; counts answers by status and version."""

    def __init__(self, host: str, port: int, path: str = "/demo/1", connections: int = 20, rate: float = 20.0,
                 max_seconds: float = 300.0, headers: dict = None, connect=None):
        """`connect`: makes each client's connection (default: plain HTTP to host:port)."""
        self.host, self.port, self.path, self.rate = host, port, path, rate
        self.connect = connect or (lambda: http.client.HTTPConnection(self.host, self.port, timeout=10))
        self.max_seconds, self.headers = max_seconds, headers or {}
        self.stopping = threading.Event()
        self.versions: Counter = Counter()
        self.failures: List[str] = []
        self.total = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(connections)]

    def start(self) -> "KeepAliveLoad":
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def _client(self) -> None:
        conn, interval = None, 1.0 / self.rate
        deadline, next_at = time.monotonic() + self.max_seconds, time.monotonic()
        while not self.stopping.is_set() and time.monotonic() < deadline:
            outcome = None
            try:
                if conn is None:
                    conn = self.connect()
                conn.request("GET", self.path, headers=self.headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    outcome = f"HTTP {resp.status}: {body[:120]!r}"
                else:
                    version = json.loads(body).get("version")
            except (OSError, ValueError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                conn = None
            with self._lock:
                self.total += 1
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.versions[version] += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()

    def rate_seen(self) -> float:
        return self.total / max(1e-9, time.monotonic() - self.started)

    def finish(self) -> "KeepAliveLoad":
        self.elapsed = time.monotonic() - self.started
        self.stopping.set()
        for t in self.threads:
            t.join(15)
        return self


class ManyClients:
    """`threads` clients on kept-alive connections, each request from a new client id (so a
    canary split sends its share to the canary), as fast as the answers come or at `rate` per
    thread. Records every answer's time, status and version, to count errors after a moment."""

    def __init__(self, host: str, port: int, path: str = "/demo/1", threads: int = 4, rate: float = 0.0,
                 max_seconds: float = 600.0, headers: dict = None):
        self.host, self.port, self.path, self.threads, self.rate = host, port, path, threads, rate
        self.max_seconds, self.headers = max_seconds, headers or {}
        self.stopping = threading.Event()
        self.answers: List[tuple] = []          # (monotonic time, status, version or "")
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []

    def start(self) -> "ManyClients":
        for _ in range(self.threads):
            t = threading.Thread(target=self._client, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _client(self) -> None:
        import uuid
        deadline = time.monotonic() + self.max_seconds
        conn = None
        while not self.stopping.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", self.path, headers={**self.headers, "X-Client-Id": uuid.uuid4().hex})
                resp = conn.getresponse()
                body = resp.read()
                try:
                    version = json.loads(body).get("version", "") if resp.status == 200 else ""
                except ValueError:
                    version = ""
                answer = (time.monotonic(), resp.status, version)
            except (OSError, http.client.HTTPException):
                conn = None
                answer = (time.monotonic(), 0, "")
            with self._lock:
                self.answers.append(answer)
            if self.rate:
                time.sleep(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def since(self, moment: float) -> List[tuple]:
        with self._lock:
            return [a for a in self.answers if a[0] >= moment]

    def errors_since(self, moment: float) -> List[tuple]:
        return [a for a in self.since(moment) if a[1] != 200]

    def finish(self) -> "ManyClients":
        self.stopping.set()
        for t in self._threads:
            t.join(15)
        return self


class WebSocketEcho(threading.Thread):
    """One WebSocket through the proxy (aiohttp), sending a message every `every` seconds and
    keeping each answer, or the error that ended it, until stopped."""

    def __init__(self, port: int, path: str = "/demo/ws", every: float = 0.2, host: str = ""):
        super().__init__(daemon=True)
        self.url, self.every = f"http://127.0.0.1:{port}{path}", every
        self.headers = {"Host": host} if host else {}
        self.answers, self.error = [], None
        self.open = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        import asyncio
        asyncio.run(self._talk())

    async def _talk(self) -> None:
        import asyncio
        import aiohttp
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self.url, headers=self.headers,
                                              timeout=aiohttp.ClientWSTimeout(ws_close=10)) as ws:
                    self.open.set()
                    n = 0
                    while not self.stopping.is_set():
                        await ws.send_str(f"m{n}")
                        self.answers.append(await ws.receive_str(timeout=10))
                        n += 1
                        await asyncio.sleep(self.every)
        except Exception as exc:          # a closed socket, a refused upgrade: the test says which
            self.error = exc
        finally:
            self.open.set()

    def finish(self) -> list:
        self.stopping.set()
        self.join(15)
        return self.answers
