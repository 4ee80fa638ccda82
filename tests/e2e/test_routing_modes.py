"""The same routing semantics in both modes (dynamic: the Lua router reads a pushed table;
reload: every change is a config and a reload), on real Consul and nginx: the same routes, the
same settings, and each client on the same side of a canary split.

Instances are registered straight into Consul with their gates passed by the test; each answers
with its own name, so the test sees which one served."""
from __future__ import annotations

import json
import time
from dataclasses import replace
import urllib.error
import urllib.request

import pytest

from catalog import route_settings
from catalog.model import Instance, RoutingPolicy
from testbed.http_backend import LoopbackHTTP, closed_port, read_body, reply_json
from testbed.load import KeepAliveLoad
from testbed.split import in_split
from testbed.nginx_workers import WorkerGenerations
from testbed.processes import Proc, get_json, pid_alive, python_module, wait_until

pytestmark = pytest.mark.e2e

PORTS = {"dynamic": (18006, 19006), "reload": (18007, 19007)}
GRPC_PORTS = {"dynamic": 18766, "reload": 18767}


class Backend(LoopbackHTTP):
    """A loopback HTTP server that answers {"name": ..., "version": ...} (after 3 s under /slow/)."""

    def __init__(self, name: str, version: str):
        def answer(handler):
            read_body(handler)
            if "/slow/" in handler.path:
                time.sleep(3)
            reply_json(handler, {"name": name, "version": version})
        super().__init__(answer)


@pytest.fixture(scope="module", params=["dynamic", "reload"])
def proxy(request, consul_server, tmp_path_factory):
    mode = request.param
    listen, admin = PORTS[mode]
    base = tmp_path_factory.mktemp(f"modes-{mode}")
    proc = Proc("proxy-reloader", python_module(
        "proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
        consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(base / "nginx"), "--mode", mode,
        "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}", "--exec",
        "--grpc-listen", f"127.0.0.1:{GRPC_PORTS[mode]}"), base).start()
    px = Proxy(mode, listen, admin, base / "nginx", proc)
    wait_until(lambda: px.status()["served_version"], 30, f"proxy-reloader up ({mode})")
    yield px
    master = px.master
    proc.stop()
    wait_until(lambda: not pid_alive(master), 15, "nginx stopped with proxy-reloader")


class Proxy:
    def __init__(self, mode, listen, admin, prefix, proc):
        self.mode, self.listen, self.admin, self.prefix, self.proc = mode, listen, admin, prefix, proc

    @property
    def master(self) -> int:
        return int((self.prefix / "nginx.pid").read_text())

    def status(self, path="/status"):
        return get_json(self.admin, path)[1]

    def get(self, path, headers=None):
        return get_json(self.listen, path, headers)


@pytest.fixture
def service(proxy, stores, unique):
    """A fresh service name, its backends and registrations cleaned up after the test."""
    made = []

    def add(version, port=None, **labels):
        """An admitted instance: a live backend, or at `port` (where nothing listens) if given;
        `labels` are its proxy.* labels, as registrator carries them (proxy_host=, timeout=)."""
        b = None if port else Backend(f"{unique}-{len(made)}", version)
        host = route_settings.parse_hosts("proxy.host", labels.pop("proxy_host")) if "proxy_host" in labels else ""
        path = labels.pop("proxy_path", f"/{unique}/")
        inst = Instance(id=f"modes:{unique}-{len(made)}:8080", service=unique, address="127.0.0.1",
                        port=port or b.port, version=version, container_id=f"c{unique}{len(made)}",
                        container_name=f"{unique}-{len(made)}", image="x:1", registered_by="registrator@modes",
                        proxy_host=host, proxy_path=path, route_settings=route_settings.from_labels(
                            {f"proxy.{k}": v for k, v in labels.items()}))
        stores.instances.register(inst)
        stores.instances.apply_gate(inst, True, "passed (set by the test)")
        made.append((inst, b))
        return b
    add.name = unique
    yield add
    for inst, b in made:
        stores.instances.deregister(inst.id)
        if b:
            b.close()
    stores.consul.kv_delete(f"gatekeeper/policies/{unique}")


def routed(proxy, name, n):
    route = proxy.status(f"/services/{name}")
    return route.get("stable") and len(route["stable"]["servers"]) + len((route.get("canary") or {}).get("servers", [])) == n


def set_policy(stores, name, **fields):
    index, current = stores.policies.get(name)
    policy = RoutingPolicy(**{**(current.__dict__ if current else {}), "service": name, **fields})
    assert stores.policies.put(policy, index)


def test_round_robin_over_admitted_instances(proxy, service):
    for _ in range(3):
        service("v1")
    wait_until(lambda: routed(proxy, service.name, 3), 30, "three instances routed")
    names = [proxy.get(f"/{service.name}/x")[1]["name"] for _ in range(30)]
    assert len(set(names)) == 3 and max(names.count(n) for n in set(names)) <= 12


def test_nothing_admitted_answers_503_json(proxy, service, stores):
    service("v1")
    wait_until(lambda: routed(proxy, service.name, 1), 30, "routed")
    inst = Instance(id=f"modes:{service.name}-0:8080", service=service.name, address="127.0.0.1", port=1,
                    version="v1", container_id="x", container_name="x", image="x", registered_by="r")
    stores.instances.apply_gate(inst, False, "closed by the test")
    wait_until(lambda: proxy.get(f"/{service.name}/x")[0] == 503, 30, "503 once nothing is admitted")
    status, body = proxy.get(f"/{service.name}/x")
    assert body == {"error": f"no admitted instance of service {service.name}", "service": service.name,
                    "status": 503}


def test_canary_split_stickiness_header_and_cookie(proxy, service, stores):
    service("v1")
    service("v2")
    set_policy(stores, service.name, stable="v1", canary="v2", weight=20, mode="manual")
    wait_until(lambda: routed(proxy, service.name, 2) and proxy.status(f"/services/{service.name}")["canary"],
               30, "canary routed")
    path = f"/{service.name}/x"
    sides = {f"client-{i}": proxy.get(path, {"X-Client-Id": f"client-{i}"})[1]["version"] for i in range(1000)}
    canary = sum(v == "v2" for v in sides.values())
    assert 150 <= canary <= 250, f"{canary / 10:.1f} % to the canary at weight 20"
    # each client where nginx's split_clients puts it, in both modes alike
    assert sides == {key: "v2" if in_split(key, 20) else "v1" for key in sides}
    for i in range(20):                      # sticky: a client stays on its side
        sides = {proxy.get(path, {"X-Client-Id": f"sticky-{i}"})[1]["version"] for _ in range(5)}
        assert len(sides) == 1
    cookie_sides = {proxy.get(path, {"Cookie": "client_id=abc"})[1]["version"] for _ in range(5)}
    header_sides = {proxy.get(path, {"X-Client-Id": "abc"})[1]["version"] for _ in range(5)}
    assert cookie_sides == header_sides and len(cookie_sides) == 1     # the header and cookie are one key
    assert all(proxy.get(path, {"X-Canary": "always"})[1]["version"] == "v2" for _ in range(10))
    assert all(proxy.get(path, {"Cookie": "canary=always"})[1]["version"] == "v2" for _ in range(10))


def test_weight_change_is_served_and_reloads_only_in_reload_mode(proxy, service, stores):
    service("v1")
    service("v2")
    set_policy(stores, service.name, stable="v1", canary="v2", weight=0, mode="manual")
    wait_until(lambda: proxy.status(f"/services/{service.name}").get("canary"), 30, "canary at 0 %")
    path = f"/{service.name}/x"
    assert all(proxy.get(path)[1]["version"] == "v1" for _ in range(10))
    generations = WorkerGenerations(proxy.master)
    generations.start()
    set_policy(stores, service.name, weight=100)
    wait_until(lambda: proxy.get(path)[1]["version"] == "v2", 10, "weight 100 served")
    new = generations.finish()
    assert new == (0 if proxy.mode == "dynamic" else 1), f"{new} worker generations for one weight change"


def test_route_settings_from_labels_take_effect_and_change_live(proxy, service, stores):
    """proxy.host (exact and wildcard), proxy.allow, proxy.body_size and proxy.timeout, from an
    instance's labels through Consul, the same in both modes; then the stable version's labels
    change and the new settings are served (with no reload in dynamic mode)."""
    name = service.name
    service("v1", proxy_host=f"{name}.test,*.{name}.test", allow="127.0.0.0/8", body_size="1k", timeout="1s",
            retries="0")
    wait_until(lambda: routed(proxy, name, 1), 30, "routed")
    path = f"/{name}/x"
    assert proxy.get(path)[0] == 404                                   # only at its names now
    assert proxy.get(path, {"Host": f"{name}.test"})[1]["version"] == "v1"
    assert proxy.get(path, {"Host": f"www.{name}.test"})[1]["version"] == "v1"
    assert post(proxy, path, 1024, f"{name}.test")[0] == 200
    assert post(proxy, path, 1025, f"{name}.test") == (413, {
        "error": f"the request body is larger than service {name} takes (proxy.body_size)", "service": name,
        "status": 413})
    assert proxy.get(f"/{name}/slow/", {"Host": f"{name}.test"}) == (504, {
        "error": f"service {name} did not answer in time (proxy.timeout)", "service": name, "status": 504})
    generations = WorkerGenerations(proxy.master)
    generations.start()
    registered = stores.instances.of(name)[0].instance
    changed = replace(registered, route_settings=route_settings.from_labels(
        {"proxy.allow": "10.0.0.0/8", "proxy.timeout": "10s"}))
    stores.instances.register(changed)
    stores.instances.apply_gate(changed, True, "passed (set by the test)")
    # (in reload mode an old worker may still take a connection or two while it shuts down)
    refused = (403, {"error": f"service {name} does not take requests from your address", "service": name,
                     "status": 403})
    wait_until(lambda: proxy.get(path, {"Host": f"{name}.test"}) == refused, 30, "the new allow-list served")
    new = generations.finish()
    assert new == (0 if proxy.mode == "dynamic" else 1), f"{new} worker generations for one settings change"


def test_a_rate_limit_from_labels_answers_429_past_the_burst(proxy, service):
    service("v1", rate_limit="1r/m,burst=2")
    wait_until(lambda: routed(proxy, service.name, 1), 30, "routed")
    answers = [proxy.get(f"/{service.name}/x") for _ in range(5)]
    assert [status for status, _ in answers] == [200, 200, 200, 429, 429]   # one, and a burst of two more
    assert answers[-1][1] == {"error": f"too many requests from your address for service {service.name} "
                                       "(proxy.rate_limit)", "service": service.name, "status": 429}


def test_a_grpc_service_answers_on_the_grpc_listener(proxy, service):
    from tests.integration.test_route_table import GrpcEcho, grpc_say
    echo = GrpcEcho("g")
    try:
        service("v1", port=echo.port, protocol="grpc", proxy_path="/echo.Echo/")
        wait_until(lambda: routed(proxy, service.name, 1), 30, "routed")
        assert grpc_say(b"hello", GRPC_PORTS[proxy.mode]) == b"g: hello"
        status, body = proxy.get("/echo.Echo/Say")
        assert status == 426 and body["service"] == service.name
    finally:
        echo.close()


def post(proxy, path, size, host):
    req = urllib.request.Request(f"http://127.0.0.1:{proxy.listen}{path}", data=b"x" * size, method="POST",
                                 headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_refused_peer_costs_a_retry_not_a_client_error(proxy, service):
    service("v1")
    service("v1", port=closed_port())
    wait_until(lambda: routed(proxy, service.name, 2), 30, "both routed")
    load = KeepAliveLoad("127.0.0.1", proxy.listen, path=f"/{service.name}/x", connections=4, rate=25,
                         max_seconds=3).start()
    time.sleep(3)
    load.finish()
    assert load.total > 100 and load.failures == []


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and line.split("{", 1)[1].split("}", 1)[0] == want:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_per_request_metrics_by_service_version_and_status(proxy, service, stores):
    url = f"http://127.0.0.1:{proxy.admin}/metrics"
    if proxy.mode == "reload":          # no Lua, so no per-request metrics: proxy-reloader's own only
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "proxy_reloader_renders_total" in text and "proxystack_requests_total" not in text
        return
    service("v7")
    wait_until(lambda: routed(proxy, service.name, 1), 30, "routed")
    for _ in range(25):
        assert proxy.get(f"/{service.name}/x")[0] == 200
    inst = Instance(id=f"modes:{service.name}-0:8080", service=service.name, address="127.0.0.1", port=1,
                    version="v7", container_id="x", container_name="x", image="x", registered_by="r")
    stores.instances.apply_gate(inst, False, "closed by the test")
    wait_until(lambda: proxy.get(f"/{service.name}/x")[0] == 503, 30, "503 once nothing is admitted")

    def scraped():
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            return r.read().decode()
    labels = dict(service=service.name, version="v7")
    text = wait_until(lambda: (lambda t: t if metric(t, "proxystack_requests_total", **labels, status="2xx") >= 25
                               and metric(t, "proxystack_requests_total", service=service.name, version="none",
                                          status="5xx") >= 1 else None)(scraped()),
                      10, "the counts flushed to shared memory (each worker flushes once a second)")
    ok = metric(text, "proxystack_requests_total", **labels, status="2xx")     # 25, and any 200 while polling
    assert metric(text, "proxystack_requests_total", service=service.name, version="none", status="5xx") >= 1
    assert metric(text, "proxystack_request_duration_seconds_count", **labels) == ok
    assert metric(text, "proxystack_request_duration_seconds_bucket", **labels, le="+Inf") == ok
    assert "secret" not in text.lower()
