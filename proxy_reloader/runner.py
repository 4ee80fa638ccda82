"""Watch -> quiesce -> render -> apply, after consul-template's runner.

Two blocking-query watches (every check's state, and the routing policies in KV) wake the
runner; a quiescence timer waits until changes stop for `min_wait` (but never longer than
`max_wait` after the first one), so a burst of changes costs one reload, not a storm.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from catalog.consul_store import POLICIES
from catalog.retry import TRANSIENT, backoff
from catalog.watch import Watch

from .nginx import Nginx, NginxError
from .render import render
from .view import build_view

log = logging.getLogger(__name__)


@dataclass
class RunnerOptions:
    listen: str = "127.0.0.1:8000"
    min_wait: float = 0.1
    max_wait: float = 1.0
    wait: float = 30.0          # blocking query wait
    workers: str = "2"


class Runner:
    def __init__(self, store, nginx: Nginx, options: RunnerOptions):
        self.store, self.nginx, self.options = store, nginx, options
        self.stopping = threading.Event()
        self.dirty = threading.Event()
        self.reloads = 0
        self.last_error: Optional[str] = None

    def render_once(self) -> bool:
        """Build the view, render, apply if changed. True when nginx got a new config."""
        view = build_view(self.store)
        text = render(view.routes, str(self.nginx.prefix), self.options.listen, self.options.workers)
        changed = self.nginx.apply(text)
        if changed:
            self.reloads += 1
            log.info("nginx reloaded: %s", "; ".join(
                f"{r.service} -> {r.stable.version + ' ' + str(len(r.stable.servers)) + ' instance(s)' if r.stable else '503'}"
                for r in view.routes) or "no services")
        return changed

    def run(self) -> None:
        watches = [
            Watch("checks", self.store.wait_checks, self.dirty.set, self.options.wait, self.stopping),
            Watch("policies", lambda i, w: self.store.wait_kv(POLICIES, i, w), self.dirty.set,
                  self.options.wait, self.stopping),
        ]
        for w in watches:
            w.start()
        while not self.stopping.is_set():
            if not self.dirty.wait(timeout=1.0):
                continue
            self._quiesce()
            self._apply()

    def _quiesce(self) -> None:
        """Wait until no change for min_wait, or max_wait since the first change."""
        first = time.monotonic()
        self.dirty.clear()
        while not self.stopping.is_set():
            remaining = first + self.options.max_wait - time.monotonic()
            if remaining <= 0 or not self.dirty.wait(timeout=min(self.options.min_wait, remaining)):
                return
            self.dirty.clear()

    def _apply(self) -> None:
        try:
            self._render_retrying()
            self.last_error = None
        except NginxError as exc:
            # nginx refused the new config: it keeps serving the last good one.
            self.last_error = str(exc)
            log.error("new config rejected by nginx -t, keeping the last good one: %s", exc)

    @backoff(max_wait=10.0, what="render from Consul")
    def _render_retrying(self) -> None:
        if not self.stopping.is_set():
            self.render_once()

    def stop(self) -> None:
        self.stopping.set()
        self.dirty.set()
