"""The one place the stack asks Prometheus anything: a version's traffic through the proxies
over a window (progressive analysis), a service's load (the autoscaler) and every service's
traffic at once (the dashboard), from the proxies' per-request metrics (PromQL over HTTP,
instant queries)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

from urllib.parse import urlsplit, urlunsplit

import requests

from .promotion.analysis import Measurement
from .fleet.scaling import Load


class MetricsUnavailable(RuntimeError):
    """Prometheus did not answer, or answered an error: no evidence either way."""


def _number(text: str) -> Optional[float]:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value


@dataclass(frozen=True)
class Traffic:
    """A service's traffic through the proxies, every version together."""
    rps: float
    success_rate: Optional[float]     # % not 5xx; None without requests
    p99_ms: Optional[float]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def shown(url: str) -> str:
    """The URL as messages, logs and the history show it: without the user and password a
    Prometheus behind basic authentication is given in it (http://user:pass@host:9090)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


class Prometheus:
    def __init__(self, url: str, timeout: float = 3.0):
        self.url = url.rstrip("/")
        self.shown = shown(self.url)
        self.timeout = timeout
        self.session = requests.Session()

    def _query(self, promql: str) -> list:
        try:
            r = self.session.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self.shown}: {type(exc).__name__}") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus at {self.shown} answered {r.status_code}: "
                                     f"{body.get('error', '')}"[:300])
        return body["data"]["result"]

    def _scalar(self, promql: str) -> Optional[float]:
        result = self._query(promql)
        return _number(result[0]["value"][1]) if result else None

    def _by_service(self, promql: str) -> Dict[str, float]:
        out = {}
        for series in self._query(promql):
            value = _number(series["value"][1])
            if value is not None:
                out[series["metric"].get("service", "")] = value
        return out

    def measure(self, service: str, version: str, window: float) -> Measurement:
        sel = f'service="{_label(service)}",version="{_label(version)}"'
        w = f"{max(1, round(window))}s"
        total = self._scalar(f"sum(increase(proxystack_requests_total{{{sel}}}[{w}]))") or 0.0
        if total <= 0:
            return Measurement(0.0, None, None)
        errors = self._scalar(f'sum(increase(proxystack_requests_total{{{sel},status="5xx"}}[{w}]))') or 0.0
        p99 = self._scalar(f"histogram_quantile(0.99, sum by (le) "
                           f"(increase(proxystack_request_duration_seconds_bucket{{{sel}}}[{w}])))")
        return Measurement(round(total, 1), round(100.0 * (total - errors) / total, 2),
                           None if p99 is None else round(p99 * 1000, 1))

    def service_load(self, service: str, window: float) -> Load:
        """Requests per second and p99 of a service (every version) through the proxies."""
        sel = f'service="{_label(service)}"'
        w = f"{max(2, round(window))}s"
        try:
            rate = self._scalar(f"sum(rate(proxystack_requests_total{{{sel}}}[{w}]))") or 0.0
            p99 = self._scalar(f"histogram_quantile(0.99, sum by (le) "
                               f"(rate(proxystack_request_duration_seconds_bucket{{{sel}}}[{w}])))") if rate else None
        except MetricsUnavailable as exc:
            return Load(None, None, str(exc))
        return Load(round(rate, 1), None if p99 is None else round(p99 * 1000, 1))

    def traffic(self, window: float = 60.0) -> Dict[str, Traffic]:
        """Every service's requests per second, success rate and p99 over `window`, in three
        queries whatever the number of services; MetricsUnavailable when Prometheus fails."""
        w = f"{max(2, round(window))}s"
        rates = self._by_service(f"sum by (service) (rate(proxystack_requests_total[{w}]))")
        errors = self._by_service(f'sum by (service) (rate(proxystack_requests_total{{status="5xx"}}[{w}]))')
        p99 = self._by_service(f"histogram_quantile(0.99, sum by (service, le) "
                               f"(rate(proxystack_request_duration_seconds_bucket[{w}])))")
        out = {}
        for service, rate in rates.items():
            ok = round(100.0 * (rate - errors.get(service, 0.0)) / rate, 2) if rate > 0 else None
            out[service] = Traffic(round(rate, 2), ok, round(p99[service] * 1000, 1) if service in p99 else None)
        return out
