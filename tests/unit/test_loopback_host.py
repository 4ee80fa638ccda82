"""The loopback endpoints (the daemons' --metrics, proxy-reloader's --admin status) have no
authentication; what keeps other sites out is the loopback address. A page elsewhere that a
browser is made to resolve to 127.0.0.1 (DNS rebinding) still sends its own name as Host: both
endpoints answer it 421 and show nothing. Served for real, on this machine's loopback."""
import http.client
import json
import socket

import pytest

from catalog.metrics import loopback_host, serve_metrics
from proxy_reloader.status_server import serve_status


@pytest.mark.parametrize("header", ["", "127.0.0.1", "127.0.0.1:9101", "127.8.9.10:1", "localhost",
                                    "LOCALHOST:8001", "[::1]:9101", "[::1]", "::1"])
def test_a_loopback_name_is_ours(header):
    assert loopback_host(header)


@pytest.mark.parametrize("header", ["rebind.example", "rebind.example:9101", "localhost.rebind.example",
                                    "127.0.0.1.rebind.example", "192.0.2.1:9101", "[2001:db8::1]:9101",
                                    "0.0.0.0:9101", "[::ffff:192.0.2.1]"])
def test_any_other_name_is_not(header):
    assert not loopback_host(header)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, host: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_the_metrics_endpoint_answers_its_own_name_and_refuses_another():
    port = free_port()
    server = serve_metrics(f"127.0.0.1:{port}")
    try:
        status, body = get(port, "/metrics", f"127.0.0.1:{port}")
        assert status == 200 and ("process_" in body or "python_info" in body)
        status, body = get(port, "/metrics", f"rebind.example:{port}")
        assert status == 421 and "python_info" not in body
        assert "rebind.example" in json.loads(body)["error"]
    finally:
        server.shutdown()
        server.server_close()


# 192.0.2.10 (a documentation address) is data in the status shown, never dialled.
def test_the_status_endpoint_answers_its_own_name_and_refuses_another():
    port = free_port()
    secret_route = {"services": {"shop": {"servers": ["192.0.2.10:8080"]}}, "service_errors": {}}
    server = serve_status(f"127.0.0.1:{port}", lambda: secret_route, lambda: "")
    try:
        status, body = get(port, "/services", f"localhost:{port}")
        assert status == 200 and "192.0.2.10:8080" in body
        for path in ("/status", "/services", "/services/shop", "/metrics"):
            status, body = get(port, path, "rebind.example")
            assert status == 421 and "192.0.2.10" not in body, path
            assert "open it by its address" in json.loads(body)["error"]
    finally:
        server.shutdown()
        server.server_close()
