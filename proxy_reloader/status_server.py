"""Read-only status endpoint on a loopback admin port (a request naming another Host than a
loopback one gets 421: catalog.metrics.loopback_host).

  GET /status            config version (rendered and served), reloads, last reload, errors
  GET /services          every routed service
  GET /services/NAME     one service's route: versions, servers, 503 or not
  GET /metrics           Prometheus text: proxy-reloader's own metrics and, in dynamic mode, nginx's
                         per-request metrics (proxystack_nginx_metrics_up says whether nginx answered)
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from catalog.metrics import loopback_endpoint, loopback_host, misdirected


def parse_loopback(address: str):
    """--admin's HOST:PORT, loopback only (':8001' means 127.0.0.1:8001)."""
    return loopback_endpoint("--admin", address, default_host="127.0.0.1")


def serve_status(address: str, status: Callable[[], dict], own_metrics: Callable[[], str],
                 nginx_metrics: Optional[Callable[[], str]] = None) -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread; `status()` and the metrics are read per request."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if not self._ours():
                return
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/metrics":
                return self._metrics()
            data = status()
            if path in ("", "/status"):
                self._send(200, data)
            elif path == "/services":
                self._send(200, data["services"])
            elif path.startswith("/services/") and path.count("/") == 2:
                name = path.rsplit("/", 1)[1]
                if name in data["services"]:
                    self._send(200, data["services"][name])
                elif name in data["service_errors"]:
                    self._send(200, {"service": name, "error": data["service_errors"][name]})
                else:
                    self._send(404, {"error": f"no service {name!r} is routed", "status": 404})
            else:
                self._send(404, {"error": "unknown path; try /status, /services or /services/NAME", "status": 404})

        def _metrics(self):
            text = own_metrics()
            if nginx_metrics is not None:
                # nginx down must not hide proxy-reloader's own metrics: say so in a sample
                try:
                    text, up = text + nginx_metrics(), 1
                except Exception:
                    up = 0
                text += ("# HELP proxystack_nginx_metrics_up 1 when nginx's per-request metrics were read\n"
                         f"# TYPE proxystack_nginx_metrics_up gauge\nproxystack_nginx_metrics_up {up}\n")
            raw = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _ours(self) -> bool:
            """False, having answered 421, when the request names another host than loopback."""
            header = self.headers.get("Host", "")
            if loopback_host(header):
                return True
            self._send(421, misdirected(header))
            return False

        def do_POST(self):
            if self._ours():
                self._send(405, {"error": "read-only endpoint", "status": 405})

        do_PUT = do_DELETE = do_PATCH = do_POST

        def _send(self, code, body):
            raw = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(parse_loopback(address), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    return server
