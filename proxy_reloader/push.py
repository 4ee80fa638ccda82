"""Client of nginx's push endpoint (dynamic mode): a unix socket, and a secret only
proxy-reloader's user can read. See backends.py for the table's JSON contract."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
from pathlib import Path


class PushError(RuntimeError):
    """nginx refused a push or could not be reached; the message carries its answer."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def ensure_secret(path: Path) -> str:
    """The push secret: made once (0600, in a 0700 folder), reused after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)
    return path.read_text().strip()


class PushClient:
    def __init__(self, socket_path: Path, secret: str, timeout: float = 5.0):
        self.socket_path, self.secret, self.timeout = str(socket_path), secret, timeout

    def _call(self, method: str, path: str, body: bytes = b""):
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request(method, path, body=body or None,
                         headers={"X-Proxystack-Secret": self.secret, "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError as exc:
            raise PushError(f"nginx's push endpoint {self.socket_path} is unreachable: {exc}") from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, body: bytes = b"") -> dict:
        status, raw = self._call(method, path, body)
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            data = {"error": raw[:200].decode(errors="replace")}
        if status != 200:
            raise PushError(f"{method} {path}: nginx answered {status}: {data.get('error', data)}")
        return data

    def state(self) -> dict:
        """{"generation": N, "boot": ID, "services": N}: what the workers route by."""
        return self._json("GET", "/state")

    def push(self, body: bytes) -> dict:
        return self._json("POST", "/backends", body)

    def backends(self) -> dict:
        return self._json("GET", "/backends")

    def metrics(self) -> str:
        status, raw = self._call("GET", "/metrics")
        if status != 200:
            raise PushError(f"GET /metrics: nginx answered {status}")
        return raw.decode()
