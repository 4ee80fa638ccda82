"""Each daemon's own metrics: a Prometheus endpoint on a loopback address, announced in Consul
as an instance of the `proxystack-metrics` service, so that Prometheus finds it (monitoring.targets).

Each component declares its metrics in its own `metrics` module (prometheus_client, default
registry); this module only serves and announces them. The endpoint shows counters and
timings, never a token, an address of Consul or a container's environment.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Optional

from prometheus_client import generate_latest, start_http_server

from .stores.proxies import METRICS_SERVICE, ProxyStore
from .validation import InvalidValue

log = logging.getLogger(__name__)


def own_metrics() -> str:
    """This process's metrics in Prometheus's text format."""
    return generate_latest().decode()


def loopback_endpoint(option: str, value: str, default_host: str = "") -> tuple:
    """'127.0.0.1:9101' -> ('127.0.0.1', 9101), for an endpoint without authentication (the
    daemons' --metrics, proxy-reloader's --admin): loopback only. `default_host` stands in for
    an empty host (':8001'); without one, an empty host is refused."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") or default_host
    try:
        if not sep or not ipaddress.ip_address(host).is_loopback or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise InvalidValue(option, value, "a loopback HOST:PORT such as 127.0.0.1:9101 "
                           "(the endpoint has no authentication)") from None
    return host, int(port)


def parse_metrics_address(value: str) -> tuple:
    return loopback_endpoint("--metrics", value)


def metrics_address(value: str) -> str:
    """argparse type for --metrics: '' (off) or a loopback HOST:PORT."""
    if value:
        try:
            parse_metrics_address(value)
        except InvalidValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def serve_metrics(address: str) -> None:
    """Serve this process's metrics at http://ADDRESS/metrics (a daemon thread)."""
    host, port = parse_metrics_address(address)
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise InvalidValue("--metrics", address, f"cannot listen there ({exc.strerror or exc}); "
                           "choose a free port") from None
    log.info("metrics on http://%s:%d/metrics", host, port)


def announce(proxies: ProxyStore, address: str, component: str, instance: str) -> Optional[str]:
    """Announce the endpoint in Consul as an instance of `proxystack-metrics`; return its id
    (withdraw it on exit), None when Consul refused (the endpoint still serves)."""
    service_id = f"{METRICS_SERVICE}:{component}:{instance}"
    try:
        proxies.announce_metrics(service_id, component, address)
    except Exception as exc:                 # metrics must never stop the daemon
        log.warning("could not announce the metrics endpoint in Consul (%s); Prometheus will not find it. "
                    "The token needs service \"%s\" write.", exc, METRICS_SERVICE)
        return None
    return service_id


def withdraw(proxies: ProxyStore, service_id: Optional[str]) -> None:
    if service_id:
        try:
            proxies.withdraw(service_id)
        except Exception as exc:
            log.warning("could not withdraw the metrics endpoint from Consul: %s", exc)
