"""Each daemon's own metrics: a Prometheus endpoint on a loopback address, announced in Consul
as an instance of the `proxystack-metrics` service, so that Prometheus finds it (monitoring.targets).

Each component declares its metrics in its own `metrics` module (prometheus_client, default
registry); this module only serves and announces them. The endpoint shows counters and
timings, never a token, an address of Consul or a container's environment.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import generate_latest, make_wsgi_app

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


def loopback_host(header: Optional[str]) -> bool:
    """Whether a request's Host header names a loopback address or `localhost` (or is absent, as
    from an HTTP/1.0 client). A page of another site that a browser was made to resolve to
    127.0.0.1 (DNS rebinding) sends that site's name: the loopback endpoints, which have no
    authentication, do not answer it."""
    if not header:
        return True
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def misdirected(header: str) -> dict:
    """The JSON body of the 421 a loopback endpoint answers to any other Host."""
    return {"error": f"this endpoint answers to loopback host names only (127.0.0.1, ::1, localhost), "
                     f"not to Host: {header}; open it by its address", "status": 421}


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


def serve_metrics(address: str) -> WSGIServer:
    """Serve this process's metrics at http://ADDRESS/metrics (a daemon thread)."""
    host, port = parse_metrics_address(address)
    try:
        server = make_server(host, port, loopback_only(make_wsgi_app()),
                             _Server6 if ":" in host else _Server, handler_class=_Quiet)
    except OSError as exc:
        raise InvalidValue("--metrics", address, f"cannot listen there ({exc.strerror or exc}); "
                           "choose a free port") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


def loopback_only(app):
    """A WSGI app that answers 421 to a request whose Host is not a loopback name."""
    def guarded(environ, start_response):
        header = environ.get("HTTP_HOST", "")
        if loopback_host(header):
            return app(environ, start_response)
        body = (json.dumps(misdirected(header)) + "\n").encode()
        start_response("421 Misdirected Request", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body)))])
        return [body]
    return guarded


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


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
