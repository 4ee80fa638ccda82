"""Watch -> quiesce -> compute -> apply, after consul-template's runner.

The catalog mirror's blocking queries (one per service, plus the service list and the routing
policies) wake the runner; a quiescence timer waits until changes stop for `min_wait` (but
never longer than `max_wait` after the first one). Only the services that changed are
computed again.

Applying, in dynamic mode: the table entries that changed (a route, its settings, its
instances, its split) and the certificates that changed are pushed to nginx's Lua side and
confirmed (the workers report the pushed generation); the config file holds no route and no
certificate, so no catalog or certificate change reloads nginx. In reload mode every change is a
new config and a reload (and there is no TLS listener).

Certificates come from a folder (scanned when idle) and from Consul (the mirror's watch); the
local CA issuer, when there is one, issues for routed hosts that have none after each apply.

When nginx refuses a rendered config, the services whose own config it refuses keep their
last good route (or stay out, if they never had one) and every other service's change is
applied anyway: one bad service never blocks the rest.

A file nginx reads that cannot be written (the config, the table file; a full disk, say) is an
error like a refused config: nginx goes on serving what it has, the error shows in the status and
the Consul check, and the write is tried again every `write_retry` seconds.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from catalog.stores import Stores
from catalog.stores.proxies import PROXY_HEARTBEAT
from catalog.retry import TRANSIENT
from catalog.routing import Route

from . import backends, metrics
from .certificates import CertificateBook, LocalIssuer
from .nginx import Nginx, NginxError
from .push import PushClient, PushError
from .render import DYNAMIC, RELOAD, Settings, config_version, render_config
from .view import route_of, without_conflicts

log = logging.getLogger(__name__)


@dataclass
class RunnerOptions:
    listen: str = "127.0.0.1:8000"
    min_wait: float = 0.1
    max_wait: float = 1.0
    workers: str = "2"
    mode: str = RELOAD
    modules: str = "/usr/lib/nginx/modules"
    read_timeout: str = "30s"
    grpc_listen: str = ""
    tls_listen: str = ""
    # After Consul was unreachable or restarted, its catalog can be incomplete for a moment
    # (agents re-sync their services): for this long a service that vanishes, or loses every
    # admitted instance, keeps its last good route instead of being dropped.
    blip_grace: float = 15.0
    # Idle, how often to ask nginx whether it restarted (and so lost the pushed table).
    restart_check: float = 2.0
    # Idle, how often to look for changed files in the certificate folder (--cert-dir).
    cert_poll: float = 0.05
    # Idle, how often the local CA looks for certificates to renew (and hosts it missed).
    issue_every: float = 60.0
    # How often the proxy tells Consul it is alive (--report-check; the check's TTL is three times this).
    heartbeat: float = PROXY_HEARTBEAT
    # How soon a file nginx reads that could not be written (a full disk, say) is written again.
    write_retry: float = 5.0


class Runner:
    def __init__(self, mirror, nginx: Nginx, options: RunnerOptions, reporter=None,
                 push: Optional[PushClient] = None, certificates: Optional[CertificateBook] = None,
                 issuer: Optional[LocalIssuer] = None, acme=None):
        self.mirror, self.nginx, self.options = mirror, nginx, options
        self.settings = Settings(str(nginx.prefix), options.listen, options.workers, options.mode, options.modules,
                                 read_timeout=options.read_timeout, grpc_listen=options.grpc_listen,
                                 tls_listen=options.tls_listen)
        self.certificates = certificates or CertificateBook()
        self.issuer = issuer                         # the local CA, issuing for hosts with no certificate
        self.acme = acme                             # the ACME issuer (its own thread), told what is routed
        self.certs_pushed: Dict[str, dict] = {}      # the certificates nginx confirmed
        self.challenges_pushed: Dict[str, str] = {}  # the ACME HTTP-01 answers nginx confirmed
        self.reporter = reporter                     # reports health as a Consul check, if set
        self.push = push                             # nginx's push endpoint (dynamic mode)
        self.served = None                           # publishes what nginx serves (--report-check)
        self.stopping = threading.Event()
        self.dirty = threading.Event()
        self.reloads = self.renders = self.pushes = 0
        self.last_reload: Optional[float] = None
        self.last_push: Optional[float] = None
        self.last_error: Optional[str] = None
        self.push_error: Optional[str] = None
        self.service_errors: Dict[str, str] = {}
        self.file_errors: Dict[str, str] = {}        # per file nginx reads: why it could not be written
        self.computed: Dict[str, Route] = {}         # per service, from Consul
        self.invalid: Dict[str, str] = {}            # per service: why Consul's data is left out
        self.routes: List[Route] = []                # what nginx serves now
        self.last_good: Dict[str, Route] = {}
        self.table: Dict[str, dict] = {}             # the entries nginx confirmed
        self.generation = 0
        self.boot: Optional[str] = None
        self.recheck: Optional[threading.Timer] = None
        self._last_check = 0.0
        self._last_issue = time.monotonic()
        self._static_text: Optional[str] = None
        self._last_beat = float("-inf")

    @property
    def dynamic(self) -> bool:
        return self.options.mode == DYNAMIC

    def _render(self, routes: List[Route]) -> str:
        if self.dynamic:
            # no route in it: the same text for the runner's whole life, rendered once
            if self._static_text is None:
                self._static_text = render_config([], self.settings)
            return self._static_text
        return render_config(routes, self.settings)

    # --- computing what to serve -----------------------------------------------------------
    def update(self, snapshot) -> None:
        """Compute the routes of the services in `snapshot` again."""
        for service, (registered, policy_raw) in snapshot.items():
            route, error = route_of(service, registered, policy_raw)
            self.computed.pop(service, None)
            self.invalid.pop(service, None)
            if route:
                self.computed[service] = route
            if error:
                self.invalid[service] = error
                log.error("service %s left out of the proxy: %s", service, error)

    def apply(self) -> bool:
        """Bring nginx in line with the computed routes. True when nginx was reloaded."""
        self.renders += 1
        metrics.RENDERS.inc()
        errors = dict(self.invalid)
        routes = without_conflicts(self.computed, errors)
        routes, errors = self._ride_out_blips(routes, errors)
        try:
            routes, served, text, candidate = self._validated(routes, errors)
            self._written(self.settings.config)
        except OSError as exc:
            if not self.dynamic:
                raise                                # nothing changes: nginx keeps its config (see _apply)
            # The config could not be written (a full disk, say); it holds no route, so the
            # table is pushed all the same and only a new listener or option waits.
            self._unwritten(self.settings.config, exc)
            served, text, candidate = routes + self._kept(routes, errors), None, None
        self.service_errors = errors
        pushed = self._push_table(served) if self.dynamic else True   # before a reload: a new route has its servers
        if pushed and self.issuer is not None:
            self._issue(served)
        if pushed and self.acme is not None:
            self.acme.update([h for r in served for h in r.hosts], self.certificates.serving())
        if candidate is not None:
            with metrics.APPLY_SECONDS.labels("reload").time():
                self.nginx.install(candidate, text)
            metrics.APPLIED.labels("reload", "ok").inc()
            self.reloads += 1
            self.last_reload = time.time()
            log.info("nginx reloaded (config %s): %s", config_version(text), self._describe(served))
        if pushed:
            # Only now is this what nginx serves: the status endpoint (and whoever waits on it)
            # never sees a route before the workers do.
            self.routes = served
            self.last_good = {r.service: r for r in served}
            self.certificates.routed = {h for r in served for h in r.hosts}
            if self.served is not None:
                self.served.update(served)
        return candidate is not None

    def _validated(self, routes: List[Route], errors: Dict[str, str]):
        """The config for `routes`, checked by nginx: (routes, served, text, candidate). A service
        whose own config nginx refuses is left out and named in `errors`; the candidate is None
        when nginx runs that config already. OSError: the candidate could not be written."""
        served = routes + self._kept(routes, errors)
        text = self._render(served)                  # in dynamic mode, the same for any routes
        try:
            candidate = self.nginx.validate(text) if text != self.nginx.current() else None
        except NginxError as exc:
            metrics.APPLIED.labels("reload", "refused").inc()
            routes, errors = self._isolate(routes, errors, exc)
            served = routes + self._kept(routes, errors)
            text = self._render(served)
            candidate = self.nginx.validate(text) if text != self.nginx.current() else None
        return routes, served, text, candidate

    @staticmethod
    def _describe(routes: List[Route]) -> str:
        return "; ".join(
            f"{r.service} -> {r.stable.version + ' x' + str(len(r.stable.servers)) if r.stable else '503'}"
            + (f" + canary {r.canary.version} {r.weight}%" if r.canary else "")
            for r in sorted(routes, key=lambda r: r.service)) or "no services"

    def _issue(self, served: List[Route]) -> None:
        """The local CA's certificates for routed hosts with none (they come back by the KV watch)."""
        self._last_issue = time.monotonic()
        try:
            self.issuer.issue([h for r in served for h in r.hosts], self.certificates.serving())
        except TRANSIENT as exc:
            log.warning("local CA: could not write certificates to Consul: %s", exc)
        except Exception:                            # issuing must never stop the proxy's loop
            log.exception("local CA: issuing failed")

    # --- dynamic mode: the table -----------------------------------------------------------
    def _push_table(self, served: List[Route]) -> bool:
        """Push what changed; True when the workers confirmed it (or nothing changed)."""
        want = {r.service: backends.entry(r) for r in served}
        want_certs = self.certificates.for_push()
        want_challenges = dict(self.certificates.challenges)
        try:
            self._ask_nginx()
            full = self.boot is None
            delta = want if full else {s: e for s, e in want.items() if self.table.get(s) != e}
            certs = want_certs if full else {n: c for n, c in want_certs.items() if self.certs_pushed.get(n) != c}
            challenges = want_challenges if full else {
                t: a for t, a in want_challenges.items() if self.challenges_pushed.get(t) != a}
            if not full:
                delta.update({s: None for s in self.table if s not in want})
                certs.update({n: None for n in self.certs_pushed if n not in want_certs})
                challenges.update({t: None for t in self.challenges_pushed if t not in want_challenges})
            if delta or certs or challenges or full:
                generation = max(self.generation + 1, int(time.time() * 1000))
                started = time.monotonic()
                self.push.push(backends.push_body(generation, delta, full, certs if (certs or full) else None,
                                                  challenges if (challenges or full) else None))
                state = self.push.state()
                if state["generation"] != generation:
                    raise PushError(f"pushed generation {generation}, but the workers report {state['generation']}")
                metrics.APPLY_SECONDS.labels("push").observe(time.monotonic() - started)
                metrics.APPLIED.labels("push", "ok").inc()
                self.generation, self.table, self.boot = generation, want, state["boot"]
                self.certs_pushed, self.challenges_pushed = want_certs, want_challenges
                self.pushes += 1
                self.last_push = time.time()
                what = "full" if full else f"{len(delta)} service(s)" + (f", {len(certs)} certificate(s)" if certs else "")
                log.info("pushed generation %d (%s): %s", generation, what,
                         self._describe([r for r in served if r.service in delta]) if len(delta) <= 5 else "")
            self.push_error = None
            return True
        except (PushError, ValueError) as exc:
            metrics.APPLIED.labels("push", "failed").inc()
            self.push_error = str(exc)
            self.boot = None                         # push everything once nginx answers again
            log.error("nginx keeps its last table: %s", exc)
            self._recheck_after(1.0)
            return False
        finally:
            self._write_table(want, want_certs, want_challenges)

    def _write_table(self, entries: Dict[str, dict], certs: Dict[str, dict], challenges: Dict[str, str]) -> None:
        """The table file holds the full current state, so an nginx (re)start routes right at
        once. It keeps the last table it held when an entry breaks the contract (ValueError) or
        the file cannot be written; nginx's workers serve the pushed table either way."""
        try:
            backends.write_table(self.settings.table, max(self.generation, 1), entries, certs, challenges)
        except ValueError:
            return
        except OSError as exc:
            self._unwritten(self.settings.table, exc)
            return
        self._written(self.settings.table)

    # --- files nginx reads: the config and the table -----------------------------------------
    def _unwritten(self, path, exc: OSError) -> None:
        """A file nginx reads could not be written (a full disk, say): it is reported (status,
        Consul check) and written again after write_retry; nginx serves what it has meanwhile."""
        error = f"could not write {path}: {exc.strerror or exc}"
        if self.file_errors.get(str(path)) != error:
            log.error("%s; nginx keeps serving what it has, trying again every %g s", error,
                      self.options.write_retry)
        self.file_errors[str(path)] = error
        self._recheck_after(self.options.write_retry)

    def _written(self, path) -> None:
        if self.file_errors.pop(str(path), None) is not None:
            log.info("%s written again", path)

    def _ask_nginx(self) -> None:
        """Notice an nginx restart (a new boot id, or an older generation): the table it holds
        is the file's, so everything is pushed again."""
        state = self.push.state()
        if state.get("boot") != self.boot or state.get("generation", 0) < self.generation:
            if self.boot is not None:
                log.warning("nginx restarted (boot %s, generation %s): pushing the whole table again",
                            state.get("boot"), state.get("generation"))
            self.boot = None
            self.generation = max(self.generation, int(state.get("generation") or 0))
        self._last_check = time.monotonic()

    def _idle(self) -> None:
        if not self.dynamic:
            return
        if self.certificates.scan_files():
            self.dirty.set()
        if self.issuer is not None and time.monotonic() - self._last_issue >= self.options.issue_every:
            self._issue(self.routes)                 # renewals come due with no change in the catalog
        if time.monotonic() - self._last_check < self.options.restart_check:
            return
        self._last_check = time.monotonic()
        try:
            state = self.push.state()
        except PushError:
            return                                   # nginx is not up; its start reads the file
        if state.get("boot") != self.boot:
            self.dirty.set()

    # --- riding out Consul blips and refusals ----------------------------------------------
    def _ride_out_blips(self, routes: List[Route], errors: Dict[str, str]):
        """Within blip_grace of a Consul disruption, do not drop what served well before."""
        since = getattr(self.mirror, "disrupted_at", 0.0)
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
        """Apply again later (the grace is over, or nginx may answer again)."""
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
        good = isolate(self.nginx, self.settings, routes, errors, exc)
        for service in {r.service for r in routes} - {r.service for r in good}:
            log.error("service %s: nginx refused its config, keeping its last good one: %s", service, errors[service])
        return good, errors

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        self.mirror.start()
        while not self.stopping.is_set() and not self.mirror.ready.wait(timeout=1.0):
            self._heartbeat()
            self._idle()                             # nginx serves what it has until Consul answers
        if self.stopping.is_set():
            return
        self.update(self.mirror.everything())
        self._take_certificates()
        self._apply()
        while not self.stopping.is_set():
            self._heartbeat()
            if not self.dirty.wait(timeout=self.options.cert_poll if self.certificates.folder else 1.0):
                self._idle()
                continue
            self._quiesce()
            self.update(self.mirror.take())
            self._take_certificates()
            self._apply()
        self.mirror.stop()

    def _take_certificates(self) -> None:
        if self.dynamic:
            self.certificates.scan_files()
            self.certificates.take_kv(self.mirror.take_certificates())

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
            self.apply()
            self.last_error = self._problems()
        except NginxError as exc:
            # nginx refused the config or did not take it: it keeps serving the last good one.
            self._written(self.settings.config)      # it was written, for nginx to refuse
            self.last_error = str(exc)
            log.error("new config not applied, nginx keeps the last good one: %s", exc)
        except OSError as exc:
            # The config could not be written (a full disk, say): nginx keeps the last good one.
            self._unwritten(self.settings.config, exc)
            self.last_error = self._problems()
        self._report()

    def _problems(self) -> Optional[str]:
        problems = [f"{s}: {e}" for s, e in sorted(self.service_errors.items())]
        if self.push_error:
            problems.append(f"push: {self.push_error}")
        problems += [e for _, e in sorted(self.file_errors.items())]
        return "; ".join(problems) or None

    def _report(self) -> None:
        if self.reporter is None:
            return
        try:
            self.reporter(self.last_error is None, self.last_error or
                          f"config {config_version(self.nginx.current() or '')}: {len(self.routes)} service(s)")
        except TRANSIENT as exc:
            log.warning("could not report the proxy's state to Consul: %s", exc)

    def _heartbeat(self) -> None:
        """Tell Consul this proxy is alive (its `:alive` check), every `heartbeat` seconds: one
        that stops saying so is not waited for by `gatekeeper wait`."""
        beat = getattr(self.reporter, "heartbeat", None)
        if beat is None or time.monotonic() - self._last_beat < self.options.heartbeat:
            return
        try:
            beat()
            self._last_beat = time.monotonic()
        except TRANSIENT as exc:
            log.warning("could not tell Consul this proxy is alive: %s", exc)

    def status(self) -> dict:
        """What the status endpoint shows."""
        out = {
            "mode": self.options.mode,
            "config_version": config_version(self.nginx.current() or ""),
            "served_version": self.nginx.served_version(),
            "reloads": self.reloads, "renders": self.renders,
            "last_reload": self.last_reload, "last_error": self.last_error,
            "service_errors": dict(self.service_errors), "file_errors": dict(self.file_errors),
            "services": {r.service: r.to_dict() for r in self.routes},
        }
        if self.dynamic:
            try:
                served = self.push.state().get("generation")
            except PushError:
                served = None
            out.update(pushes=self.pushes, last_push=self.last_push, generation=self.generation,
                       served_generation=served, push_error=self.push_error, tls_listen=self.options.tls_listen,
                       **self.certificates.status())
            if self.acme is not None:
                out["acme"] = self.acme.status()
        return out

    def stop(self) -> None:
        self.stopping.set()
        self.dirty.set()


def isolate(nginx: Nginx, settings: Settings, routes: List[Route], errors: Dict[str, str],
            exc: NginxError) -> List[Route]:
    """The routes nginx accepts each on its own; each refused one goes into `errors` with
    nginx's word. Re-raises `exc` when nginx refuses none alone (not one service's fault)."""
    good = []
    for route in routes:
        try:
            nginx.validate(render_config([route], settings)).unlink()
            good.append(route)
        except NginxError as own:
            errors[route.service] = f"nginx refused its config: {own}"
    if len(good) == len(routes):
        raise exc
    return good


def render_once(stores: Stores, nginx: Nginx, settings: Settings, push: Optional[PushClient] = None,
                certificates: Optional[CertificateBook] = None) -> bool:
    """One full read of Consul (synchronous) -> config file, and in dynamic mode the table file
    (pushed too when nginx runs). True when nginx got a new config. A service whose config nginx
    refuses is left out with a warning, as the runner does: one bad registration never keeps
    nginx from starting with every other route."""
    from .view import build_view
    view = build_view(stores.instances, stores.policies)
    routes = view.routes
    try:
        changed = nginx.apply(render_config(routes, settings))
    except NginxError as exc:
        errors: Dict[str, str] = {}
        routes = isolate(nginx, settings, routes, errors, exc)
        for service, error in sorted(errors.items()):
            log.warning("service %s left out: %s", service, error)
        changed = nginx.apply(render_config(routes, settings))
    if settings.mode == DYNAMIC:
        entries = {r.service: backends.entry(r) for r in routes}
        book = certificates or CertificateBook()
        book.scan_files()
        with contextlib.suppress(*TRANSIENT):
            book.take_kv(stores.certificates.items())
        certs, challenges = book.for_push(), dict(book.challenges)
        generation = int(time.time() * 1000)
        backends.write_table(settings.table, generation, entries, certs, challenges)
        if push is not None and nginx.master_pid() is not None:
            state = push.state()
            generation = max(generation, int(state.get("generation") or 0) + 1)
            push.push(backends.push_body(generation, entries, full=True, certificates=certs, challenges=challenges))
    return changed
