"""proxy_reloader with real Consul and nginx: instances are registered straight into Consul
(gates passed by the test), nginx runs as proxy-reloader's own child (--exec)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from catalog.model import Instance
from tests.conftest import host_port
from testbed.load import LoadClient
from testbed.processes import Proc, ROOT, pid_alive, python_module, wait_until

pytestmark = pytest.mark.e2e

LISTEN, ADMIN = 18002, 19002


def admit(stores, service, port, version="v1", host="", path=None, container="x"):
    inst = Instance(id=f"px:{service}-{port}:8080", service=service, address="127.0.0.1", port=port,
                    version=version, container_id=f"{container}{port}", container_name=f"{service}-{port}",
                    image="demo:v1", registered_by="registrator@px", proxy_path=path or f"/{service}/",
                    proxy_host=host)
    stores.instances.register(inst)
    stores.instances.apply_gate(inst, True, "9/9 passed (set by the test)")
    return inst


def status(path="/status"):
    return status_of(ADMIN, path)


def status_of(admin: int, path="/status"):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as r:
        return json.loads(r.read())


def get(path, port=LISTEN, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def reloader(consul_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("px")
    proc = Proc("proxy-reloader", python_module(
        "proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
        consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(base / "nginx"),
        "--listen", f"127.0.0.1:{LISTEN}", "--admin", f"127.0.0.1:{ADMIN}", "--exec", "--report-check"), base).start()
    wait_until(lambda: status()["served_version"], 30, "nginx serving under proxy-reloader")
    yield proc
    proc.stop()
    # What the tests registered goes even when one failed half-way: a service left in the shared
    # Consul would be routed by every later module's proxy (one nginx refuses broke them all).
    from catalog.stores import Stores
    stores = Stores.connect(consul_server.address, token=consul_server.management_token)
    for instance_id in stores.instances.local("registrator@px"):
        stores.instances.deregister(instance_id)
    pid_file = base / "nginx" / "nginx.pid"
    assert not pid_file.exists() or not pid_alive(int(pid_file.read_text() or 0)), \
        "stopping proxy-reloader stops its nginx"


def proxy_check(consul_server, listen=LISTEN):
    checks = requests.get(f"http://{consul_server.address}/v1/health/checks/proxy-reloader", timeout=5,
                          headers=consul_server.headers).json()
    return next(c for c in checks if c["CheckID"] == f"proxy-reloader:127.0.0.1:{listen}:config")


def test_status_endpoint_reports_routes_and_refuses_writes(reloader, stores):
    admit(stores, "stat", 30001)
    wait_until(lambda: "stat" in status()["services"], 20, "the route in /status")
    route = status("/services/stat")
    assert route["stable"]["servers"] == ["127.0.0.1:30001"] and route["path"] == "/stat/"
    wait_until(lambda: (lambda st: st["config_version"] == st["served_version"])(status()), 10,
               "the workers serving the rendered config")
    with pytest.raises(urllib.error.HTTPError) as err:
        status("/services/nosuch")
    assert err.value.code == 404
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}/status", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405
    stores.instances.deregister("px:stat-30001:8080")


def test_admin_address_must_be_loopback(consul_server, tmp_path):
    res = Proc("bad-admin", python_module("proxy_reloader", "--consul", consul_server.address, "--nginx-prefix",
                                          str(tmp_path / "n"), "--admin", "0.0.0.0:19999"), tmp_path).start()
    res.popen.wait(30)
    assert res.popen.returncode == 2 and "loopback" in res.log()


def test_a_burst_of_changes_costs_a_handful_of_reloads(reloader, stores):
    before = status()["reloads"]
    t0 = time.monotonic()
    for i in range(100):
        admit(stores, "burst", 31000 + i)        # 200 changes: a registration and a gate pass each
    last_change = time.monotonic()
    wait_until(lambda: len((status()["services"].get("burst") or {"stable": {"servers": []}})["stable"]["servers"]) == 100,
               20, "all 100 instances routed")
    settled = time.monotonic()
    reloads = status()["reloads"] - before
    assert reloads <= 8, f"{reloads} reloads for 200 changes in {last_change - t0:.1f} s"
    assert settled - last_change < 3.0, "no change waits much longer than max-wait (1 s)"
    for i in range(100):
        stores.instances.deregister(f"px:burst-{31000 + i}:8080")


def test_a_service_nginx_refuses_is_isolated_in_reload_mode_and_served_in_dynamic_mode(
        reloader, stores, consul_server, tmp_path):
    long_host = ".".join(["a" * 60] * 3) + ".example"          # valid DNS, longer than nginx's bucket
    # Reload mode writes each host into nginx.conf, and nginx refuses this one: the service is
    # left out and named, every other service goes on being applied.
    listen, admin = 18003, 19003
    proc = Proc("proxy-reloader-reload", python_module(
        "proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
        consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(tmp_path / "reload"), "--mode", "reload",
        "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}", "--exec", "--report-check"),
        tmp_path).start()
    try:
        wait_until(lambda: status_of(admin)["served_version"], 30, "the reload-mode proxy up")
        admit(stores, "longhost", 32001, host=long_host, path="/")
        wait_until(lambda: "longhost" in status_of(admin)["service_errors"], 20, "the refusal in /status")
        assert "server_names_hash" in status_of(admin)["service_errors"]["longhost"]
        wait_until(lambda: (lambda c: c["Status"] == "critical" and "longhost" in c["Output"])(
            proxy_check(consul_server, listen)), 20, "the proxy's own check failing and naming the service")
        admit(stores, "other", 32002)                            # other services still get applied
        wait_until(lambda: "other" in status_of(admin)["services"], 20, "another service applied meanwhile")
        wait_until(lambda: (lambda st: st["config_version"] == st["served_version"])(status_of(admin)), 10,
                   "the workers serving the rendered config")
        # Dynamic mode holds routes in the pushed table, not in nginx.conf: nothing to refuse.
        wait_until(lambda: "longhost" in status()["services"], 20, "the long host routed in dynamic mode")
        assert "longhost" not in status()["service_errors"]
        assert get("/", headers={"Host": long_host})[0] == 502      # routed (to a port nothing listens on)
        # An nginx (re)started meanwhile gets every other route: the first render leaves it out too.
        once = subprocess.run(python_module(
            "proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
            consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(tmp_path / "nginx"),
            "--listen", "127.0.0.1:18004", "--once", "--mode", "reload"), capture_output=True, text=True, timeout=60)
        assert once.returncode == 0 and "service longhost left out: nginx refused its config" in once.stderr, once.stderr
        rendered = (tmp_path / "nginx" / "nginx.conf").read_text()
        assert "other" in rendered and "longhost" not in rendered and long_host not in rendered
        stores.instances.deregister("px:longhost-32001:8080")
        wait_until(lambda: proxy_check(consul_server, listen)["Status"] == "passing", 20, "the check passing again")
    finally:
        stores.instances.deregister("px:longhost-32001:8080")
        stores.instances.deregister("px:other-32002:8080")
        proc.stop()


@pytest.fixture
def two_demo_instances(reloader, stores, run_container, demo_images):
    containers = [run_container("demo:v2") for _ in range(2)]
    instances = [admit(stores, "pxdemo", host_port(c), version="v2", path="/demo/", container=c.id[:12])
                 for c in containers]
    wait_until(lambda: len((status()["services"].get("pxdemo") or {"stable": {"servers": []}})["stable"]["servers"]) == 2,
               30, "both instances routed")
    wait_until(lambda: get("/demo/1")[0] == 200, 10, "traffic through the proxy")
    yield containers, instances
    for inst in instances:
        stores.instances.deregister(inst.id)


def test_an_instance_killed_under_load_costs_no_client_error(two_demo_instances):
    containers, _ = two_demo_instances
    load = LoadClient("127.0.0.1", LISTEN, max_seconds=30)
    load.start()
    time.sleep(1)
    containers[0].kill()                      # SIGKILL; Consul still lists it: nginx must retry
    time.sleep(3)
    load.finish()
    assert load.failures == [], load.failures[:5]
    assert load.versions["v2"] == load.total


def test_consul_down_for_10_seconds_traffic_continues(two_demo_instances, consul_server, stores):
    load = LoadClient("127.0.0.1", LISTEN, max_seconds=60)
    load.start()
    consul_server.stop()
    try:
        time.sleep(10)
    finally:
        consul_server.start()
    time.sleep(1)
    load.finish()
    assert load.failures == [] and load.total > 100, (load.total, load.failures[:5])
    admit(stores, "after-outage", 33001)
    wait_until(lambda: "after-outage" in status()["services"], 60, "the reloader applying changes again")
    stores.instances.deregister("px:after-outage-33001:8080")


def test_a_proxy_that_starts_before_consul_serves_what_it_had_and_registers_once_consul_is_back(
        two_demo_instances, consul_server, tmp_path):
    """A host's boot, or Consul electing a leader: proxy-reloader (--exec --report-check, as compose
    and Ansible run it) comes up while Consul does not answer. nginx starts with the config on
    disk, and the proxy registers itself at its first report Consul takes."""
    listen, admin = 18016, 19016
    args = python_module("proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
                         consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(tmp_path / "nginx"),
                         "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}", "--exec",
                         "--report-check")
    first = Proc("proxy-reloader-before", args, tmp_path).start()
    try:
        wait_until(lambda: get("/demo/1", port=listen)[0] == 200, 30, "the second proxy serving")
    finally:
        first.stop()
    again = Proc("proxy-reloader-boot", args, tmp_path)
    consul_server.stop()
    try:
        again.start()
        wait_until(lambda: get("/demo/1", port=listen)[0] == 200, 30, "served from the config on disk, Consul down")
        assert again.alive(), again.log()[-2000:]
    finally:
        consul_server.start()
    try:
        wait_until(lambda: proxy_check(consul_server, listen)["Status"] == "passing", 60,
                   "the proxy registered and reporting once Consul is back")
        assert "Traceback" not in again.log() and "not registered in Consul yet" in again.log(), again.log()[-2000:]
        # a restarted Consul's agent registers the instances it kept again by its anti-entropy,
        # which may come after the proxy's own report: until then the route is not there
        wait_until(lambda: get("/demo/1", port=listen)[0] == 200, 60, "served once Consul has the instances again")
    finally:
        again.stop()


def test_panic_keeps_serving_when_every_instance_fails_a_health_check(two_demo_instances, consul_server):
    _, instances = two_demo_instances
    url = f"http://{consul_server.address}/v1/agent/check"
    for inst in instances:               # a health-check outage: every instance critical at once
        requests.put(f"{url}/register", timeout=5, headers=consul_server.headers, data=json.dumps(
            {"ID": inst.health_check_id, "Name": "outage", "ServiceID": inst.id, "TTL": "1h", "Status": "critical"}))
    try:
        wait_until(lambda: status()["services"]["pxdemo"]["note"].startswith("panic"), 20, "panic mode")
        assert [get("/demo/1")[0] for _ in range(20)] == [200] * 20
    finally:
        for inst in instances:
            requests.put(f"{url}/deregister/{inst.health_check_id}", timeout=5, headers=consul_server.headers)


def test_exec_mode_restarts_nginx_when_it_dies(reloader, stores):
    admit(stores, "execd", 34001)
    wait_until(lambda: "execd" in status()["services"], 20, "route")
    pid_file = [p for p in reloader.args if p.endswith("nginx")][0] + "/nginx.pid"
    old = int(open(pid_file).read())
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: status()["served_version"] == status()["config_version"] and
               int(open(pid_file).read()) != old, 30, "nginx restarted by proxy-reloader")
    assert "restarting" in reloader.log()
    stores.instances.deregister("px:execd-34001:8080")


def test_once_with_a_token_consul_refuses_says_so_and_exits_3(consul_server, tmp_path):
    bogus = tmp_path / "bogus.token"
    bogus.write_text("00000000-0000-0000-0000-000000000000\n")
    once = subprocess.run(python_module(
        "proxy_reloader", "--consul", consul_server.address, "--consul-token-file", str(bogus),
        "--nginx-prefix", str(tmp_path / "nginx"), "--listen", "127.0.0.1:18017", "--once"),
        capture_output=True, text=True, timeout=60)
    assert once.returncode == 3 and "Traceback" not in once.stderr, once.stderr
    assert f"Consul at {consul_server.address} refused the request" in once.stderr and "token" in once.stderr, once.stderr


@pytest.fixture
def echo_port():
    """A loopback HTTP server that answers with the request headers it got, as JSON."""
    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_nginx_hides_its_version_limits_bodies_and_sets_request_headers(reloader, stores, echo_port):
    inst = admit(stores, "echo", echo_port)
    try:
        wait_until(lambda: get("/echo/x")[0] == 200, 20, "the echo service routed")
        with urllib.request.urlopen(f"http://127.0.0.1:{LISTEN}/echo/x", timeout=5) as r:
            assert r.headers["Server"] == "nginx"                       # no version
            seen = json.loads(r.read())
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert len(seen["x-request-id"]) == 32
        req = urllib.request.Request(f"http://127.0.0.1:{LISTEN}/echo/x", data=b"x" * (2 * 1024 * 1024), method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 413
    finally:
        stores.instances.deregister(inst.id)


def test_a_malformed_routing_policy_keeps_the_last_good_route(two_demo_instances, stores, consul_server):
    stores.consul.kv_put("gatekeeper/policies/pxdemo", "{this is not json")
    try:
        wait_until(lambda: "pxdemo" in status()["service_errors"], 20, "the policy error in /status")
        assert "routing policy" in status()["service_errors"]["pxdemo"]
        assert [get("/demo/1")[0] for _ in range(20)] == [200] * 20, "the last good route keeps serving"
        cli = python_module("gatekeeper", "--consul", consul_server.address, "--consul-token-file",
                            consul_server.token_file("operator"))
        res = subprocess.run(cli + ["status", "pxdemo"], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert res.returncode == 0 and "INVALID" in res.stdout
        res = subprocess.run(cli + ["promote", "pxdemo"], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert res.returncode == 1 and "invalid" in res.stderr and "gatekeeper/policies/pxdemo" in res.stderr
    finally:
        stores.consul.kv_delete("gatekeeper/policies/pxdemo")
