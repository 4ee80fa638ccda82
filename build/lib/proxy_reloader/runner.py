"""Watch -> quiesce -> render -> apply, after consul-template's runner.

Two blocking-query watches (every check's state, and the routing policies in KV) wake the
runner; a quiescence timer waits until changes stop for `min_wait` (but never longer than
`max_wait` after the first one), so a burst of changes costs one reload, not a storm.

When nginx refuses a rendered config, the services whose own config it refuses keep their
last good route (or stay out, if they never had one) and every other service's change is
applied anyway: one bad service never blocks the rest.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from catalog.consul_store import POLICIES
from catalog.retry import TRANSIENT, backoff
from catalog.routing import Route
from catalog.watch import Watch

from .nginx import Nginx, NginxError, ReloadError
from .render import config_version, render
from .view import build_view

log = logging.getLogger(__name__)


@dataclass
class RunnerOptions:
    listen: str = "127.0.0.1:8000"
    min_wait: float = 0.1
    max_wait: float = 1.0
    wait: float = 30.0          # blocking query wait
    workers: str = "2"
    # After Consul was unreachable or restarted, its catalog can be incomplete for a moment
    # (agents re-sync their services): for this long a service that vanishes, or loses every
    # admitted instance, keeps its last good route instead of being dropped.
    blip_grace: float = 15.0


class Runner:
    def __init__(self, store, nginx: Nginx, options: RunnerOptions, reporter=None):
        self.store, self.nginx, self.options = store, nginx, options
        self.reporter = reporter                     # reports health as a Consul check, if set
        self.stopping = threading.Event()
        self.dirty = threading.Event()
        self.reloads = 0
        self.renders = 0
        self.last_reload: Optional[float] = None
        self.last_error: Optional[str] = None
        self.service_errors: Dict[str, str] = {}
        self.routes: List[Route] = []                # what nginx serves now
        self.last_good: Dict[str, Route] = {}
        self.watches: List[Watch] = []
        self.recheck: Optional[threading.Timer] = None

    def _render(self, routes: List[Route]) -> str:
        return render(routes, str(self.nginx.prefix), self.options.listen, self.options.workers)

    def render_once(self) -> bool:
        """Build the view, render, apply if changed. True when nginx got a new config."""
        view = build_view(self.store)
        self.renders += 1
        routes, errors = self._ride_out_blips(list(view.routes), dict(view.errors))
        try:
            changed = self.nginx.apply(self._render(routes + self._kept(routes, errors)))
        except ReloadError:
            raise
        except NginxError as exc:
            routes, errors = self._isolate(routes, errors, exc)
            changed = self.nginx.apply(self._render(routes + self._kept(routes, errors)))
        routes = routes + self._kept(routes, errors)
        self.routes, self.service_errors = routes, errors
        # Remember what each service last served well; a service that is simply gone is forgotten.
        self.last_good = {r.service: r for r in routes}
        if changed:
            self.reloads += 1
            self.last_reload = time.time()
            log.info("nginx reloaded (config %s): %s", config_version(self.nginx.current() or ""), "; ".join(
                f"{r.service} -> {r.stable.version + ' x' + str(len(r.stable.servers)) if r.stable else '503'}"
                + (f" + canary {r.canary.version} {r.weight}%" if r.canary else "")
                for r in sorted(routes, key=lambda r: r.service)) or "no services")
        return changed

    def _ride_out_blips(self, routes: List[Route], errors: Dict[str, str]):
        """Within blip_grace of a Consul disruption, do not drop what served well before."""
        since = max((w.disrupted_at for w in self.watches), default=0.0)
        if not since or time.monotonic() - since >= self.options.blip_grace:
            return routes, errors
        by_service = {r.service: r for r in routes}
        kept = [s for s, good in self.last_good.items()
                if good.stable and s not in errors and (by_service.get(s) is None or by_service[s].stable is None)]
        for service in kept:
            errors[service] = "kept its last good route: Consul was unreachable or restarted moments ago"
        if kept:
            self._recheck_after(self.options.blip_grace - (time.monotonic() - since) + 0.1)
        return [r for r in routes if r.service not in kept], errors

    def _recheck_after(self, seconds: float) -> None:
        """Render again once the grace is over, so what is really gone does leave."""
        if self.recheck is not None and self.recheck.is_alive():
            return
        self.recheck = threading.Timer(max(0.0, seconds), self.dirty.set)
        self.recheck.daemon = True
        self.recheck.start()

    def _kept(self, routes: List[Route], errors: Dict[str, str]) -> List[Route]:
        """Last good routes of the services left out for an error, so their traffic goes on."""
        present = {r.service for r in routes}
        return [self.last_good[s] for s in sorted(errors) if s in self.last_good and s not in present]

    def _isolate(self, routes: List[Route], errors: Dict[str, str], exc: NginxError):
        """Find the services nginx refuses on their own; leave them out, keep the rest."""
        good = []
        for route in routes:
            try:
                self.nginx.validate(self._render([route])).unlink()
                good.append(route)
            except NginxError as own:
                errors[route.service] = f"nginx refused its config: {own}"
                log.error("service %s: nginx refused its config, keeping its last good one: %s", route.service, own)
        if len(good) == len(routes):
            raise exc                                # not one service's fault
        return good, errors

    def run(self) -> None:
        self.watches = [
            Watch("checks", self.store.wait_checks, self.dirty.set, self.options.wait, self.stopping),
            Watch("policies", lambda i, w: self.store.wait_kv(POLICIES, i, w), self.dirty.set,
                  self.options.wait, self.stopping),
        ]
        for w in self.watches:
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
            self.last_error = "; ".join(f"{s}: {e}" for s, e in sorted(self.service_errors.items())) or None
        except NginxError as exc:
            # nginx refused the config or did not take it: it keeps serving the last good one.
            self.last_error = str(exc)
            log.error("new config not applied, nginx keeps the last good one: %s", exc)
        except Exception as exc:            # a Consul answer we cannot use: keep serving, retry
            self.last_error = f"could not read Consul: {type(exc).__name__}: {exc}"
            log.error("%s; nginx keeps the last good config; retrying in 5 s", self.last_error)
            self._recheck_after(5.0)
        self._report()

    def _report(self) -> None:
        if self.reporter is None:
            return
        try:
            self.reporter(self.last_error is None, self.last_error or
                          f"config {config_version(self.nginx.current() or '')}: {len(self.routes)} service(s)")
        except TRANSIENT as exc:
            log.warning("could not report the proxy's state to Consul: %s", exc)

    @backoff(max_wait=10.0, what="render from Consul")
    def _render_retrying(self) -> None:
        if not self.stopping.is_set():
            self.render_once()

    def status(self) -> dict:
        """What the status endpoint shows."""
        return {
            "config_version": config_version(self.nginx.current() or ""),
            "served_version": self.nginx.served_version(),
            "reloads": self.reloads, "renders": self.renders,
            "last_reload": self.last_reload, "last_error": self.last_error,
            "service_errors": dict(self.service_errors),
            "services": {r.service: r.to_dict() for r in self.routes},
        }

    def stop(self) -> None:
        self.stopping.set()
        self.dirty.set()

