"""Routes and their settings live in the pushed table (dynamic mode), on a real nginx with the
Lua router: host names (exact, wildcard, default), the longest path prefix, strip_prefix, and
each route's allow-list, body size, timeouts, retries and buffering, all changed by pushes while
nginx keeps its first workers. The same settings from container labels through Consul, in both
modes: tests/e2e/test_route_settings.py."""
from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy_reloader import backends
from proxy_reloader.nginx import Nginx
from proxy_reloader.push import PushClient, ensure_secret
from proxy_reloader.render import DYNAMIC, Settings, render
from testbed.http_backend import LoopbackHTTP, closed_port, read_body, reply_json
from testbed.nginx_workers import WorkerGenerations
from testbed.processes import wait_until

PORT = 18764
GRPC_PORT = 18765


class Backend(LoopbackHTTP):
    """Answers {"name", "path", "host", "body"} (the body's length); /slow/ waits 3 s, /pause/ up
    to 20 ms, /stream/ sends a line every 0.2 s for 3 s, /big/ sends 16 MiB and notes when it has
    sent it all (none of them with a header that would turn nginx's buffering off)."""

    def __init__(self, name: str):
        self.sent_all = []
        super().__init__(lambda handler: self._answer(name, handler))

    def _answer(self, name, handler):
        body = read_body(handler)
        if "/stream/" in handler.path:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for i in range(15):
                line = f"tick {i}\n".encode()
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                handler.wfile.flush()
                time.sleep(0.2)
            handler.wfile.write(b"0\r\n\r\n")
            return
        if "/big/" in handler.path:
            size = 16 * 1024 * 1024
            handler.send_response(200)
            handler.send_header("Content-Length", str(size))
            handler.end_headers()
            for _ in range(size // 65536):
                handler.wfile.write(b"x" * 65536)
            self.sent_all.append(handler.path)
            return
        if "/slow/" in handler.path:
            time.sleep(3)
        if "/pause/" in handler.path:
            time.sleep(random.uniform(0, 0.02))
        reply_json(handler, {"name": name, "path": handler.path, "host": handler.headers.get("Host"),
                             "body": len(body)})


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("routes")
    # a body larger than 1m goes to a temporary file, which workers running as nobody (nginx
    # started as root) can only write if they can reach the prefix: pytest's folders are 0700
    for folder in (prefix, *prefix.parents):
        if folder == folder.parent or str(folder) == "/tmp":
            break
        os.chmod(folder, os.stat(folder).st_mode | 0o011)
    n = Nginx(str(prefix), listen=f"127.0.0.1:{PORT}")
    settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path(), read_timeout="10s",
                        grpc_listen=f"127.0.0.1:{GRPC_PORT}")
    secret = ensure_secret(settings.secret)
    n.apply(render([], str(n.prefix), n.listen, settings=settings))
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)
    wait_until(lambda: n.served_version(), 10, "nginx up")
    p = Proxy(n, PushClient(settings.socket, secret))
    generations = WorkerGenerations(n.master_pid())
    generations.start()
    yield p
    try:
        assert generations.finish() == 0, "nginx started new workers: a route change reloaded it"
    finally:
        os.kill(n.master_pid(), signal.SIGQUIT)
        for b in p.backends.values():
            b.close()


class Proxy:
    def __init__(self, nginx, client):
        self.nginx, self.client = nginx, client
        self.backends = {}
        self.generation = int(time.time() * 1000)

    def backend(self, name):
        if name not in self.backends:
            self.backends[name] = Backend(name)
        return self.backends[name]

    def route(self, name, path=None, hosts=(), ports=None, **settings):
        """Push one service's entry: its route and settings, served by its own backend (or by
        `ports`, where nothing may listen)."""
        ports = ports or [self.backend(name).port]
        entry = {"service": name, "weight": 0, "canary": None,
                 "stable": {"version": "v1", "servers": [["127.0.0.1", p, "v1"] for p in ports]},
                 "route": {"path": path or f"/{name}/", "hosts": list(hosts), "strip_prefix": False, **settings}}
        self.push({name: entry})

    def push(self, services):
        self.generation += 1
        self.client.push(backends.push_body(self.generation, services, full=False))

    def request(self, path, host="127.0.0.1", method="GET", body=None, headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw
            return resp.status, data, resp
        finally:
            conn.close()


def test_host_names_pick_their_routes_exact_first_then_the_longest_wildcard_then_the_default(proxy):
    proxy.route("r-default", path="/")
    proxy.route("r-exact", path="/", hosts=["api.a.test"])
    proxy.route("r-wild", path="/", hosts=["*.a.test"])
    proxy.route("r-deeper", path="/", hosts=["*.x.a.test", "other.test"])
    assert proxy.request("/x", host="api.a.test")[1]["name"] == "r-exact"
    assert proxy.request("/x", host="www.a.test")[1]["name"] == "r-wild"
    assert proxy.request("/x", host="deep.www.a.test")[1]["name"] == "r-wild"
    assert proxy.request("/x", host="y.x.a.test")[1]["name"] == "r-deeper"
    assert proxy.request("/x", host="other.test")[1]["name"] == "r-deeper"
    assert proxy.request("/x", host="a.test")[1]["name"] == "r-default"       # *.a.test is not a.test
    assert proxy.request("/x", host="API.A.TEST:18764")[1]["name"] == "r-exact"
    proxy.push({"r-default": None, "r-exact": None, "r-wild": None, "r-deeper": None})
    status, body, _ = proxy.request("/x", host="api.a.test")
    assert status == 404 and body["error"] == "no service is routed at this path"


def test_the_longest_path_prefix_wins_and_a_host_never_falls_back_to_the_default_hosts_routes(proxy):
    proxy.route("p-api", path="/api/")
    proxy.route("p-v2", path="/api/v2/")
    proxy.route("p-hosted", path="/only/", hosts=["p.test"])
    assert proxy.request("/api/v2/items?x=1")[1] == {"name": "p-v2", "path": "/api/v2/items?x=1",
                                                     "host": "127.0.0.1", "body": 0}
    assert proxy.request("/api/v1/items")[1]["name"] == "p-api"
    assert proxy.request("/api/v2")[1]["name"] == "p-api"
    assert proxy.request("/api/", host="p.test")[0] == 404
    assert proxy.request("/only/x", host="p.test")[1]["name"] == "p-hosted"
    status, _, resp = proxy.request("/only?q=1", host="p.test")
    assert status == 301 and resp.getheader("Location").endswith("/only/?q=1")


def test_strip_prefix_forwards_the_rest_of_the_path(proxy):
    proxy.route("s-strip", path="/strip/me/", strip_prefix=True)
    assert proxy.request("/strip/me/a/b?c=d")[1]["path"] == "/a/b?c=d"
    assert proxy.request("/strip/me/")[1]["path"] == "/"


def test_a_route_without_admitted_instances_answers_503_naming_its_service(proxy):
    proxy.push({"gone": {"service": "gone", "stable": None, "canary": None, "weight": 0,
                         "route": {"path": "/gone/", "hosts": [], "strip_prefix": False}}})
    status, body, _ = proxy.request("/gone/x")
    assert status == 503 and body["service"] == "gone" and "no admitted instance of service gone" in body["error"]


def test_the_allow_list_lets_only_its_networks_through(proxy):
    proxy.route("a-open", path="/allow/", allow=["127.0.0.0/8"])
    assert proxy.request("/allow/x")[0] == 200
    proxy.route("a-open", path="/allow/", allow=["10.0.0.0/8", "2001:db8::/32", "127.0.0.2/32"])
    status, body, _ = proxy.request("/allow/x")
    assert status == 403 and body["service"] == "a-open"
    proxy.route("a-open", path="/allow/", allow=["127.0.0.1/32"])
    assert proxy.request("/allow/x")[0] == 200


def test_a_client_over_the_routes_rate_limit_gets_429_and_another_route_is_not_limited(proxy):
    proxy.route("rl-slow", path="/rl-slow/", rate_limit={"rate": 0.2, "burst": 3})
    proxy.route("rl-free", path="/rl-free/")
    answers = [proxy.request("/rl-slow/x")[0] for _ in range(8)]
    assert answers == [200, 200, 200, 200, 429, 429, 429, 429]       # one, and a burst of three more
    status, body, _ = proxy.request("/rl-slow/x")
    assert status == 429 and body["service"] == "rl-slow" and "proxy.rate_limit" in body["error"]
    assert all(proxy.request("/rl-free/x")[0] == 200 for _ in range(20))
    proxy.route("rl-slow", path="/rl-slow/", rate_limit={"rate": 1000, "burst": 0})   # a new limit, at once
    time.sleep(0.01)
    assert proxy.request("/rl-slow/x")[0] == 200


def test_the_body_size_limit_is_the_routes_own(proxy):
    proxy.route("b-default", path="/body-default/")
    proxy.route("b-small", path="/body-small/", body_size=1000)
    proxy.route("b-large", path="/body-large/", body_size=3 * 1024 * 1024)
    two_mb = b"x" * (2 * 1024 * 1024)
    assert proxy.request("/body-small/", method="POST", body=b"x" * 1000)[1]["body"] == 1000
    status, body, _ = proxy.request("/body-small/", method="POST", body=b"x" * 1001)
    assert status == 413 and body["service"] == "b-small"
    assert proxy.request("/body-default/", method="POST", body=two_mb)[0] == 413         # 1m by default
    assert proxy.request("/body-large/", method="POST", body=two_mb)[1]["body"] == len(two_mb)


def test_the_read_timeout_is_the_routes_own(proxy):
    proxy.route("t-short", path="/t-short/", timeout=1, retries=0)
    proxy.route("t-long", path="/t-long/", timeout=5)
    started = time.monotonic()
    assert proxy.request("/t-short/slow/")[0] == 504
    assert time.monotonic() - started < 2.5
    assert proxy.request("/t-long/slow/")[1]["name"] == "t-long"


def test_retries_move_a_refused_request_to_another_instance_and_zero_turns_them_off(proxy):
    live = proxy.backend("rt-live").port
    dead = [closed_port(), closed_port()]
    proxy.route("rt", path="/rt/", ports=dead + [live])
    # two retries by default: whichever server round robin starts at, two dead ones are passed
    assert all(proxy.request("/rt/x")[0] == 200 for _ in range(6))
    proxy.route("rt", path="/rt/", ports=dead + [live], retries=0)
    answers = [proxy.request("/rt/x")[0] for _ in range(6)]
    assert set(answers) <= {200, 502} and answers.count(502) >= 2


def test_a_retry_moves_to_another_host_not_to_a_neighbour_on_the_host_that_failed(proxy):
    # a host gone takes all its instances: 127.0.0.2 stands for it (two refusing ports), 127.0.0.1
    # for a live host; one retry (two tries) is enough only if it leaves the failed host
    live, dead = proxy.backend("rh-live").port, [closed_port(), closed_port()]
    servers = [["127.0.0.2", dead[0], "v1"], ["127.0.0.2", dead[1], "v1"], ["127.0.0.1", live, "v1"]]
    proxy.push({"rh": {"service": "rh", "weight": 0, "canary": None, "stable": {"version": "v1", "servers": servers},
                       "route": {"path": "/rh/", "hosts": [], "strip_prefix": False, "retries": 1}}})
    answers = [proxy.request("/rh/x")[0] for _ in range(9)]
    assert answers == [200] * 9, answers


def test_a_retry_moves_to_the_other_versions_pool_once_every_host_of_its_own_failed(proxy):
    # mid-update, a host lost may hold every server of one version's pool (127.0.0.2 here); a
    # request the split placed there is retried on the other version's, not failed
    live, dead = proxy.backend("xv-live").port, closed_port()
    stable_dead = {"xv": {"service": "xv", "weight": 50,
                          "stable": {"version": "v1", "servers": [["127.0.0.2", dead, "v1"]]},
                          "canary": {"version": "v2", "servers": [["127.0.0.1", live, "v2"]]},
                          "route": {"path": "/xv/", "hosts": [], "strip_prefix": False, "retries": 1}}}
    proxy.push(stable_dead)
    answers = [proxy.request("/xv/x", headers={"X-Client-Id": f"client-{i}"})[0] for i in range(16)]
    assert answers == [200] * 16, answers
    # a client that asked for the canary stays on it, and retries 0 still means one try
    canary_dead = {"xv": {**stable_dead["xv"], "stable": {"version": "v1", "servers": [["127.0.0.1", live, "v1"]]},
                          "canary": {"version": "v2", "servers": [["127.0.0.2", dead, "v2"]]}}}
    proxy.push(canary_dead)
    assert proxy.request("/xv/x", headers={"X-Canary": "always"})[0] == 502
    assert all(proxy.request("/xv/x", headers={"X-Client-Id": f"client-{i}"})[0] == 200 for i in range(16))
    proxy.push({"xv": {**stable_dead["xv"], "weight": 0}})             # a canary at 0 %: no retry target
    assert all(proxy.request("/xv/x", headers={"X-Client-Id": f"client-{i}"})[0] == 502 for i in range(4))
    proxy.push({"xv": {**stable_dead["xv"], "route": {**stable_dead["xv"]["route"], "retries": 0}}})
    answers = [proxy.request("/xv/x", headers={"X-Client-Id": f"client-{i}"})[0] for i in range(16)]
    assert 502 in answers and 200 in answers, answers


def requests_counted(proxy, service, version, status):
    """proxystack_requests_total of one service, version and status class, as /metrics says."""
    for line in proxy.client.metrics().splitlines():
        if line.startswith(f'proxystack_requests_total{{service="{service}",version="{version}",status="{status}"}} '):
            return float(line.split()[-1])
    return 0.0


def test_the_proxys_own_502_and_504_count_in_the_metrics_under_the_version_that_failed(proxy):
    # what the progressive analysis reads: a canary whose instances refuse connections or time out
    # must show as failing, though nginx answers for it from another location
    live, dead = proxy.backend("mx-live").port, closed_port()
    proxy.push({"mx": {"service": "mx", "weight": 100,
                       "stable": {"version": "v1", "servers": [["127.0.0.1", live, "v1"]]},
                       "canary": {"version": "v2", "servers": [["127.0.0.1", dead, "v2"]]},
                       "route": {"path": "/mx/", "hosts": [], "strip_prefix": False, "retries": 0}}})
    statuses = [proxy.request("/mx/x") for _ in range(3)]
    assert [s for s, _, _ in statuses] == [502] * 3 and statuses[0][1]["service"] == "mx"
    proxy.route("mx-slow", path="/mx-slow/", timeout=1, retries=0)
    assert proxy.request("/mx-slow/slow/")[0] == 504
    wait_until(lambda: requests_counted(proxy, "mx", "v2", "5xx") == 3, 10, "the three 502s counted under v2")
    wait_until(lambda: requests_counted(proxy, "mx-slow", "v1", "5xx") == 1, 10, "the 504 counted under v1")
    assert requests_counted(proxy, "mx", "v1", "5xx") == 0


def test_each_answer_counts_under_the_version_that_gave_it_and_the_proxys_own_under_none(proxy):
    # what the progressive analysis compares: a split service's requests by the version that
    # answered each, and the proxy's own refusals (here an allow-list's 403) under the service
    stable, canary = proxy.backend("sp-v1").port, proxy.backend("sp-v2").port
    proxy.push({"sp": {"service": "sp", "weight": 50,
                       "stable": {"version": "v1", "servers": [["127.0.0.1", stable, "v1"]]},
                       "canary": {"version": "v2", "servers": [["127.0.0.1", canary, "v2"]]},
                       "route": {"path": "/sp/", "hosts": [], "strip_prefix": False}}})
    answered = {"sp-v1": 0, "sp-v2": 0}
    for i in range(40):
        status, data, _ = proxy.request("/sp/x", headers={"X-Client-Id": f"client-{i}"})
        assert status == 200
        answered[data["name"]] += 1
    assert answered["sp-v1"] > 0 and answered["sp-v2"] > 0, answered
    wait_until(lambda: (requests_counted(proxy, "sp", "v1", "2xx"), requests_counted(proxy, "sp", "v2", "2xx"))
               == (answered["sp-v1"], answered["sp-v2"]), 10, f"the split counted as answered: {answered}")
    proxy.route("sp-deny", path="/sp-deny/", allow=["127.0.0.2/32"])
    assert proxy.request("/sp-deny/x")[0] == 403
    wait_until(lambda: requests_counted(proxy, "sp-deny", "none", "4xx") == 1, 10, "the 403 counted under none")
    assert requests_counted(proxy, "sp-deny", "v1", "4xx") == 0


def test_requests_in_flight_together_are_each_served_and_counted_by_their_own_service(proxy):
    # a worker serves many requests at once, each handed from the router to the balancer and the
    # metrics by a table keyed by the request: requests of four services interleaved (each answer
    # paused up to 20 ms) must each reach their own service and count under it, none under another
    names = [f"il-{i}" for i in range(4)]
    for name in names:
        proxy.route(name)

    def client(k):
        wrong = []
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        try:
            for j in range(24):
                name = names[(k + j) % len(names)]
                conn.request("GET", f"/{name}/pause/{k}-{j}")
                resp = conn.getresponse()
                data = json.loads(resp.read())
                if resp.status != 200 or data["name"] != name:
                    wrong.append((name, resp.status, data))
        finally:
            conn.close()
        return wrong

    with ThreadPoolExecutor(16) as pool:
        wrong = [w for found in pool.map(client, range(16)) for w in found]
    assert wrong == []
    wait_until(lambda: [requests_counted(proxy, name, "v1", "2xx") for name in names] == [96] * 4, 10,
               "each service's 96 requests counted under it")


def test_buffering_off_streams_at_the_clients_pace(proxy):
    """Buffered (the default), nginx takes a large answer from the instance as fast as it comes,
    into memory and a temporary file, whatever the client's pace; with proxy.buffering=off the
    instance sends only as fast as the client reads (and each line as soon as it comes)."""
    def stalled_client(name):
        proxy.backend(name).sent_all.clear()
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=20)
        conn.request("GET", f"/{name}/big/")
        resp = conn.getresponse()
        resp.read(1024)
        time.sleep(3)                     # the client reads nothing more for a while
        sent = bool(proxy.backend(name).sent_all)
        while resp.read(1024 * 1024):
            pass
        conn.close()
        return sent
    proxy.route("bf-off", path="/bf-off/", buffering=False)
    proxy.route("bf-on", path="/bf-on/")
    assert stalled_client("bf-on") is True
    assert stalled_client("bf-off") is False

    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    started = time.monotonic()
    conn.request("GET", "/bf-off/stream/")
    resp = conn.getresponse()
    assert resp.readline() == b"tick 0\n" and time.monotonic() - started < 1.5
    resp.read()
    conn.close()


def test_a_streaming_route_whose_instances_fail_answers_in_json_like_every_other_route(proxy):
    """A route with proxy.buffering=off is proxied from a location of its own (reached by the
    router's "!stream"); its instances' failures must still come back as the proxy's JSON
    answers that name the service, not as nginx's HTML error pages."""
    proxy.route("bf-dead", path="/bf-dead/", ports=[closed_port()], buffering=False, retries=0)
    status, body, _ = proxy.request("/bf-dead/x")
    assert status == 502 and isinstance(body, dict), body
    assert body["service"] == "bf-dead" and body["status"] == 502
    proxy.route("bf-slow", path="/bf-slow/", buffering=False, timeout=1, retries=0)
    status, body, _ = proxy.request("/bf-slow/slow/")
    assert status == 504 and isinstance(body, dict) and body["service"] == "bf-slow", body


class GrpcEcho:
    """A gRPC server on loopback with one unary method, /echo.Echo/Say: b"NAME: " + the request
    (raw bytes, no generated code)."""

    def __init__(self, name: str):
        import grpc
        from concurrent import futures
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        say = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode() + b": " + request)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", {"Say": say}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self):
        self.server.stop(0)


def grpc_say(message: bytes, port: int = GRPC_PORT):
    import grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return channel.unary_unary("/echo.Echo/Say")(message, timeout=10)


def test_a_grpc_route_answers_unary_calls_on_the_grpc_listener_only(proxy):
    import grpc
    echoes = [GrpcEcho("g1"), GrpcEcho("g2")]
    try:
        proxy.route("grpc-echo", path="/echo.Echo/", ports=[e.port for e in echoes], protocol="grpc")
        answers = {grpc_say(b"hi") for _ in range(6)}
        assert answers == {b"g1: hi", b"g2: hi"}                   # balanced over both instances
        status, body, _ = proxy.request("/echo.Echo/Say", method="POST", body=b"x")
        assert status == 426 and body["service"] == "grpc-echo"     # not on the HTTP listener
        proxy.route("grpc-echo", path="/echo.Echo/", ports=[e.port for e in echoes])   # no longer gRPC
        with pytest.raises(grpc.RpcError) as err:
            grpc_say(b"hi")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED    # nginx's 404, as gRPC words it
    finally:
        proxy.push({"grpc-echo": None})
        for e in echoes:
            e.close()
