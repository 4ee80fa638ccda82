"""Login sessions: the Consul token stays on the server, the browser holds a random id.

A session lives while it is used: `idle_seconds` after its last request made by someone (a
page's live refreshes do not count) it expires, and the next request is sent to the login page
with "your session expired". Each session has its own
CSRF token, which every form that changes something must send back.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

EXPIRED, UNKNOWN = "expired", "unknown"


@dataclass
class Session:
    id: str
    token: str                 # the Consul token, never sent back to the browser
    who: str                   # the token's description, for the page header
    may_act: bool              # the token may write routing policies
    csrf: str
    seen: float
    flash: Optional[tuple] = None    # (tone, message) of the last action, shown once


class Sessions:
    def __init__(self, idle_seconds: float = 1800.0, clock: Callable[[], float] = time.monotonic):
        self.idle_seconds, self.clock = idle_seconds, clock
        self._by_id: Dict[str, Session] = {}
        self._ended: Dict[str, float] = {}     # id -> when it expired, so every later request says so
        self._lock = threading.Lock()

    def open(self, token: str, who: str, may_act: bool) -> Session:
        s = Session(secrets.token_urlsafe(32), token, who, may_act, secrets.token_urlsafe(32), self.clock())
        with self._lock:
            self._forget_expired()
            self._by_id[s.id] = s
        return s

    def lookup(self, session_id: Optional[str], use: bool = True) -> Tuple[Optional[Session], str]:
        """(the session, "") while it lives, marked used unless `use` is False (a page's own live
        refreshes are not someone using it); (None, EXPIRED) once idle too long; (None, UNKNOWN)
        for no id or one never given (a restarted dashboard, a guess)."""
        if not session_id:
            return None, UNKNOWN
        with self._lock:
            s = self._by_id.get(session_id)
            if s is None:
                return None, EXPIRED if session_id in self._ended else UNKNOWN
            now = self.clock()
            if now - s.seen > self.idle_seconds:
                del self._by_id[session_id]
                self._ended[session_id] = now
                return None, EXPIRED
            if use:
                s.seen = now
            return s, ""

    def alive(self, session_id: str) -> bool:
        """Whether the session still lives, without counting this as a use."""
        with self._lock:
            s = self._by_id.get(session_id)
            return s is not None and self.clock() - s.seen <= self.idle_seconds

    def close(self, session_id: Optional[str]) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)

    def _forget_expired(self) -> None:
        now = self.clock()
        for sid in [sid for sid, s in self._by_id.items() if now - s.seen > self.idle_seconds]:
            del self._by_id[sid]
            self._ended[sid] = now
        for sid in [sid for sid, t in self._ended.items() if now - t > self.idle_seconds]:
            del self._ended[sid]

    def __len__(self) -> int:
        return len(self._by_id)


def same_secret(a: str, b: str) -> bool:
    return bool(a) and bool(b) and secrets.compare_digest(a.encode(), b.encode())
