"""What each proxy serves (proxy-reloader/served/<proxy id>/<service>, written after nginx
confirmed it), the proxies themselves, and the services a daemon registers for itself: its own
registration with a config check and a heartbeat (`SelfReport`), and its metrics endpoint as an
instance of `proxystack-metrics`, which Prometheus discovers."""
from __future__ import annotations

import json
import logging
from typing import List, Optional

from ..consul_client import ConsulClient, ConsulError
from ..retry import TRANSIENT, is_transient
from ..kv_layout import SERVED
from ..model import ProxyState
from .instances import GATE_TTL

log = logging.getLogger(__name__)

PROXY_SERVICE = "proxy-reloader"
METRICS_SERVICE = "proxystack-metrics"     # each daemon's metrics endpoint, for Prometheus
# A proxy's heartbeat: passed every PROXY_HEARTBEAT seconds; a proxy silent for PROXY_ALIVE_TTL is
# taken for dead (killed, its host gone), and Consul removes its registration after PROXY_REAP_AFTER.
PROXY_ALIVE_TTL, PROXY_HEARTBEAT, PROXY_REAP_AFTER = "30s", 10.0, "10m"


class ProxyStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    # --- what each proxy serves --------------------------------------------------------------
    def report(self, proxy_id: str, service: str, served: Optional[dict]) -> None:
        """Record what `proxy_id` serves of `service`; None removes the record."""
        key = f"{SERVED}{proxy_id}/{service}"
        if served is None:
            self.consul.kv_delete(key)
        else:
            self.consul.kv_put(key, json.dumps(served, sort_keys=True))

    def forget(self, proxy_id: str) -> None:
        """Remove everything `proxy_id` reported."""
        self.consul.kv_delete_tree(f"{SERVED}{proxy_id}/")

    def served(self, proxy_id: str, service: str) -> Optional[dict]:
        raw = self.consul.kv_get(f"{SERVED}{proxy_id}/{service}")[1]
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def lagging(self, service: str, role: str, version: str,
                proxies: Optional[List[ProxyState]] = None) -> List[str]:
        """The live proxies (of `proxies`, all by default) that do not report serving `version` as
        `role` ("stable" or "canary") of `service` yet. A proxy that stopped saying it is alive
        applies nothing and is not counted; none announcing itself: nothing lags."""
        proxies = self.all() if proxies is None else proxies
        return [p.id for p in proxies if p.alive and (self.served(p.id, service) or {}).get(role) != version]

    def wait_served(self, index: int, wait: float) -> int:
        """Block until a proxy's report changes or `wait` seconds pass; return the index to pass
        next time (0: return at once). Keys only."""
        return self.consul.wait_keys(SERVED, index, wait)

    def all(self) -> List[ProxyState]:
        """The proxies that announce themselves in Consul (`--report-check`), alive or not. A
        registration without a heartbeat check (an older proxy-reloader) counts as alive."""
        out = []
        for e in self.consul.health_service(PROXY_SERVICE):
            sid = e["Service"]["ID"]
            beat = next((c for c in e.get("Checks") or [] if c.get("CheckID") == sid + ":alive"), None)
            alive = beat is None or beat.get("Status") == "passing"
            out.append(ProxyState(sid, alive, "" if alive else (beat.get("Output") or beat.get("Status") or "")))
        return sorted(out, key=lambda p: p.id)

    # --- a daemon's own registrations ----------------------------------------------------------
    def self_report(self, name: str, service_id: str, address: str, alive_ttl: str = PROXY_ALIVE_TTL,
                    reap_after: str = PROXY_REAP_AFTER) -> "SelfReport":
        """Register a component as a service with two TTL checks: `:config` (is its config
        applied, with a note) and `:alive` (a heartbeat; Consul removes the registration once it
        has been critical for `reap_after`, so a killed component does not count for ever).
        Consul not answering yet (the component starts first, or Consul is electing a leader) is
        no reason to stop: the registration is made at the first report Consul takes."""
        report = SelfReport(self.consul, name, service_id, address, alive_ttl, reap_after)
        try:
            return report.register()
        except TRANSIENT as exc:
            if not is_transient(exc):           # a refusal that will not change (a bad request)
                raise
            log.warning("%s: not registered in Consul yet (%s); registered at the first report Consul takes",
                        service_id, exc)
            return report

    def announce_metrics(self, service_id: str, component: str, address: str) -> None:
        """Register a daemon's metrics endpoint as an instance of `proxystack-metrics` (which
        Prometheus discovers); no check: a target that stops answering shows as down."""
        host, _, port = address.rpartition(":")
        self.consul.register_service({"ID": service_id, "Name": METRICS_SERVICE, "Address": advertised(host),
                                      "Port": int(port), "Meta": {"component": component}})

    def withdraw(self, service_id: str) -> None:
        """Deregister a service this process registered for itself (metrics, proxy)."""
        self.consul.deregister_service(service_id)


def advertised(host: str) -> str:
    """The address to register for a listener: a wildcard one (0.0.0.0, ::) is no address
    another host can reach, and Consul refuses it; registered empty, it is the node's."""
    return "" if host.strip("[]") in ("", "0.0.0.0", "::") else host


class SelfReport:
    """A component's own registration (ProxyStore.self_report): `report(ok, note)` sets its
    config check, `heartbeat()` its alive check. Either registers it again when Consul no longer
    knows it (removed after a long silence, or by hand)."""

    def __init__(self, consul: ConsulClient, name: str, service_id: str, address: str, alive_ttl: str,
                 reap_after: str):
        self.consul, self.name, self.id, self.address = consul, name, service_id, address
        self.alive_ttl, self.reap_after = alive_ttl, reap_after
        self.config_check, self.alive_check = service_id + ":config", service_id + ":alive"
        self.last = (True, "starting")

    def register(self) -> "SelfReport":
        host, _, port = self.address.rpartition(":")
        ok, note = self.last
        self.consul.register_service({
            "ID": self.id, "Name": self.name, "Address": advertised(host), "Port": int(port),
            "Checks": [
                {"CheckID": self.config_check, "Name": "config applied", "TTL": GATE_TTL,
                 "Status": "passing" if ok else "critical"},
                {"CheckID": self.alive_check, "Name": "alive", "TTL": self.alive_ttl, "Status": "passing",
                 "Notes": f"passed by the component while it runs; critical after {self.alive_ttl} of silence",
                 "DeregisterCriticalServiceAfter": self.reap_after}]})
        self.consul.set_check(self.config_check, ok, note[:1000])
        return self

    def __call__(self, ok: bool, note: str) -> None:
        self.last = (ok, note)
        self._set(self.config_check, ok, note)

    def heartbeat(self) -> None:
        self._set(self.alive_check, True, "alive")

    def _set(self, check_id: str, ok: bool, note: str) -> None:
        try:
            self.consul.set_check(check_id, ok, note[:1000])
        except ConsulError:
            # Consul does not know the check (the registration was removed): register again.
            self.register()
            self.consul.set_check(check_id, ok, note[:1000])
