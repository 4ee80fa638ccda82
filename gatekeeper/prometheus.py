"""The one place gatekeeper asks Prometheus anything: a version's traffic through the proxies
over a window, from the proxies' per-request metrics (PromQL over HTTP, instant queries)."""
from __future__ import annotations

import math
from typing import Optional

import requests

from .promotion.analysis import Measurement
from .fleet.scaling import Load


class MetricsUnavailable(RuntimeError):
    """Prometheus did not answer, or answered an error: no evidence either way."""


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class Prometheus:
    def __init__(self, url: str, timeout: float = 3.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _scalar(self, promql: str) -> Optional[float]:
        try:
            r = self.session.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url}: {type(exc).__name__}") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus at {self.url} answered {r.status_code}: "
                                     f"{body.get('error', '')}"[:300])
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

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
