"""nginx's per-request metrics over deploys (dynamic mode), on a real nginx with the Lua side:
a version the pushed table no longer lists loses its series once it has been idle for the grace
period (Settings.metrics_grace, two seconds here), a listed version keeps them however quiet,
and a full metrics zone is reported in error.log naming the setting that sizes it."""
from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time

import pytest

from proxy_reloader import backends
from proxy_reloader.nginx import Nginx
from proxy_reloader.push import PushClient, ensure_secret
from proxy_reloader.render import DYNAMIC, Settings, render
from testbed.http_backend import LoopbackHTTP, reply_json
from testbed.processes import wait_until

PORT = 18680
SMALL_ZONE_PORT = 18681
GRACE = 2


class Proxy:
    """One nginx in dynamic mode, its push client and one loopback instance behind every route."""

    def __init__(self, prefix, port: int, **settings):
        self.port = port
        self.nginx = Nginx(str(prefix), listen=f"127.0.0.1:{port}")
        s = Settings(str(self.nginx.prefix), self.nginx.listen, mode=DYNAMIC, modules=self.nginx.modules_path(),
                     **settings)
        secret = ensure_secret(s.secret)
        self.nginx.apply(render([], str(self.nginx.prefix), self.nginx.listen, settings=s))
        subprocess.run([self.nginx.binary, "-p", str(self.nginx.prefix), "-c", str(self.nginx.conf)],
                       check=True, timeout=20)
        wait_until(lambda: self.nginx.served_version(), 10, "nginx up")
        self.client = PushClient(s.socket, secret)
        self.instance = LoopbackHTTP(lambda handler: reply_json(handler, {"path": handler.path}))
        self.generation = int(time.time() * 1000)

    def stop(self):
        os.kill(self.nginx.master_pid(), signal.SIGQUIT)
        self.instance.close()

    def push(self, services):
        self.generation += 1
        self.client.push(backends.push_body(self.generation, services, full=False))

    def deploy(self, service, version, **route):
        """`service` served by the one instance at `version` alone (the previous version replaced)."""
        self.push({service: {"service": service, "weight": 0, "canary": None,
                             "stable": {"version": version, "servers": [["127.0.0.1", self.instance.port, version]]},
                             "route": {"path": f"/{service}/", "hosts": [], "strip_prefix": False, **route}}})

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def versions(self, service):
        """The versions /metrics shows a series of for `service`."""
        text = self.client.metrics()
        return set(re.findall(rf'^proxystack_\w+\{{service="{service}",version="([^"]*)"', text, re.M))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    p = Proxy(tmp_path_factory.mktemp("series"), PORT, metrics_grace=GRACE)
    yield p
    p.stop()


def test_a_replaced_version_loses_its_series_after_the_grace_and_a_listed_idle_one_keeps_them(proxy):
    proxy.deploy("quiet", "q1")
    assert proxy.get("/quiet/x") == 200
    proxy.deploy("demo", "v1")
    before_last_v1 = time.monotonic()
    assert all(proxy.get("/demo/x") == 200 for _ in range(5))
    wait_until(lambda: proxy.versions("demo") == {"v1"}, 10, "v1 counted")
    proxy.deploy("demo", "v2")
    assert all(proxy.get("/demo/x") == 200 for _ in range(5))
    wait_until(lambda: "v2" in proxy.versions("demo"), 10, "v2 counted")
    wait_until(lambda: proxy.versions("demo") == {"v2"}, 10 + 3 * GRACE, "v1's series gone, v2's kept")
    # v1 stayed for the grace after its last request (Prometheus scrapes its last increments) ...
    assert time.monotonic() - before_last_v1 >= GRACE - 0.1
    # ... while a version still in the table keeps its series however long it has been quiet
    time.sleep(GRACE + 1.5)
    assert proxy.versions("quiet") == {"q1"} and proxy.versions("demo") == {"v2"}


def test_a_service_gone_from_the_table_loses_every_series_the_proxys_own_answers_too(proxy):
    proxy.deploy("gone", "g1", allow=["127.0.0.2/32"])
    assert proxy.get("/gone/x") == 403                   # the proxy's own answer: version "none"
    proxy.deploy("gone", "g1")
    assert proxy.get("/gone/x") == 200
    wait_until(lambda: proxy.versions("gone") == {"g1", "none"}, 10, "both counted")
    time.sleep(GRACE + 1.5)
    assert proxy.versions("gone") == {"g1", "none"}      # listed: kept, however quiet
    proxy.push({"gone": None})
    wait_until(lambda: proxy.versions("gone") == set(), 10 + 3 * GRACE, "the removed service's series gone")


def test_a_full_metrics_zone_is_reported_at_most_once_per_flush_naming_the_setting(tmp_path):
    p = Proxy(tmp_path, SMALL_ZONE_PORT, metrics_size="12k", workers="1")
    started = time.monotonic()
    try:
        for i in range(40):
            p.deploy(f"s{i}", "v1")
        for _ in range(3):
            assert all(p.get(f"/s{i}/x") == 200 for i in range(40))
        log = p.nginx.prefix / "logs" / "error.log"
        full = lambda: [line for line in log.read_text().splitlines() if "proxystack_metrics is full" in line]
        wait_until(full, 10, "the full zone reported")
        time.sleep(1.5)
        lines = full()
        assert "--metrics-size" in lines[0] and "proxystack_metrics" in lines[0], lines[0]
        # one worker flushing once a second: a line per flush at most, not one per request (120)
        assert len(lines) <= time.monotonic() - started + 2, lines
    finally:
        p.stop()
