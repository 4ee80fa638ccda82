"""Deploys no client notices: on the real stack (Docker, Consul, gatekeeper, nginx with the Lua
balancer), instance, gate, weight and route changes reach nginx's workers without a reload.

Reloads are counted as nginx shows them, by new generations of worker processes."""
from __future__ import annotations

import http.client
import threading
import time

import pytest

from tests.conftest import SESSION
from catalog.model import Instance
from testbed.load import KeepAliveLoad, WebSocketEcho
from testbed.nginx_workers import WorkerGenerations
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT = 18005
DEPLOYS = 20
ROUTES = 200             # services added and removed one by one meanwhile
WEBSOCKETS = 20
# A second service that streams a line every 0.2 s for as long as the client listens
# (X-Accel-Buffering: no, as an SSE server would send). Its tests image is the base image's
# python3, which exits 0 at once: this service is about the connection, not its gate.
STREAMER = r'''
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        n = 0
        while True:
            line = ("tick %d\n" % n).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            n += 1
            time.sleep(0.2)
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
'''


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    s = Stack(consul_server, tmp_path_factory.mktemp("zero-reload"), docker_client, f"{SESSION}zr", PORT,
              drain_seconds=2).start()
    yield s
    s.stop()


class Stream(threading.Thread):
    """One long-lived response read line by line; remembers when the last line came."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", path)
        self.resp = self.conn.getresponse()
        self.lines, self.last_at, self.error = 0, time.monotonic(), None

    def run(self):
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    self.error = "the proxy closed the stream"
                    return
                self.lines += 1
                self.last_at = time.monotonic()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self):
        self.conn.close()


def base_image(docker_client):
    for tag in ("proxystack-base:bookworm-3", "python:3.11-slim"):
        try:
            docker_client.images.get(tag)
            return tag
        except Exception:
            continue
    pytest.fail("no base image with python3: `bash scripts/install.sh images` builds proxystack-base")


def start_streamer(stack, docker_client):
    image = base_image(docker_client)
    labels = {"SERVICE_NAME": "stream", "gatekeeper.tests": image, "gatekeeper.version": "s1",
              "proxy.path": "/stream/", "proxystack.test": stack.session, "proxystack.e2e": stack.session}
    c = docker_client.containers.run(image, ["python3", "-c", STREAMER], detach=True,
                                     name=f"e2e-{stack.session}-stream", ports={"8080/tcp": None}, labels=labels)
    stack.containers["stream"] = c
    return c


def deploy_and_wait(stack, name, image, version):
    stack.deploy(name, image, **{"gatekeeper.version": version})
    stack.wait(lambda: stack.served_version() == version.split("-")[0] and _stable_is(stack, version), 120,
               f"{version} served")


def _stable_is(stack, version):
    route = stack.proxy_status("/services/demo")
    return (route.get("stable") or {}).get("version") == version


def serving_demo(stack):
    """The demo service's stable version, deploying one first if this test runs alone."""
    try:
        return stack.proxy_status("/services/demo")["stable"]["version"]
    except Exception:
        stack.deploy("base", "demo:v1", **{"gatekeeper.version": "v1-base"})
        stack.wait(lambda: _stable_is(stack, "v1-base"), 120, "demo served")
        return "v1-base"


def start_echo_service(stack, docker_client):
    """A WebSocket echo service of its own (the demo app under the Host ws.test), up through the
    whole test: the demo's own instances are drained and stopped by the deploys."""
    labels = {"SERVICE_NAME": "wsecho", "proxy.host": "ws.test", "proxy.path": "/demo/",
              "gatekeeper.tests": "demo-test:latest", "gatekeeper.version": "ws1",
              "proxystack.test": stack.session, "proxystack.e2e": stack.session}
    stack.containers["wsecho"] = docker_client.containers.run(
        "demo:v1", detach=True, name=f"e2e-{stack.session}-wsecho", publish_all_ports=True, labels=labels)
    stack.wait(lambda: (stack.proxy_status("/services/wsecho").get("stable") or {}).get("version") == "ws1",
               120, "the WebSocket echo service admitted")


class RouteChurn(threading.Thread):
    """Services added and removed one by one (registered straight into Consul, gates passed, as
    a registrator would leave them): each new service is a new route, each removal ends one."""

    def __init__(self, stack, count: int):
        super().__init__(daemon=True)
        self.stack, self.count = stack, count
        self.added, self.seen, self.error = 0, 0, None
        self.owner = f"registrator@churn-{stack.session}"

    def instance(self, i: int) -> Instance:
        name = f"churn{i}"
        return Instance(id=f"churn:{name}:8080", service=name, address="127.0.0.1", port=1, version="c1",
                        container_id=f"churn{i}", container_name=name, image="churn:1", registered_by=self.owner,
                        proxy_path=f"/{name}/", proxy_host="churn.test")

    def run(self) -> None:
        stores = self.stack.stores
        try:
            for i in range(self.count):
                inst = self.instance(i)
                stores.instances.register(inst)
                stores.instances.apply_gate(inst, True, "passed (set by the test)")
                self.added += 1
                if i % 20 == 0:                  # now and then: the proxy saw it, then it goes
                    self.stack.wait(lambda: self.stack.proxy_status(f"/services/{inst.service}").get("service")
                                    == inst.service, 30, f"{inst.service} routed")
                    self.seen += 1
                else:
                    time.sleep(0.2)
                stores.instances.deregister(inst.id)
        except Exception as exc:
            self.error = exc

    def clean_up(self) -> None:
        stores = self.stack.stores
        for instance_id in stores.instances.local(self.owner):
            stores.instances.deregister(instance_id)
        for i in range(self.added):
            stores.forget_instance(self.instance(i).id)
            stores.forget_service(self.instance(i).service)


def test_twenty_deploys_and_two_hundred_routes_fail_no_request_close_no_websocket_and_reload_nothing(
        stack, docker_client):
    stack.deploy("d0", "demo:v1", **{"gatekeeper.version": "v1-0"})
    stack.wait(lambda: _stable_is(stack, "v1-0"), 120, "the first version served")
    start_streamer(stack, docker_client)
    stack.wait(lambda: (stack.proxy_status("/services/stream").get("stable") or {}).get("version") == "s1",
               120, "the streaming service admitted")
    start_echo_service(stack, docker_client)
    stream = Stream(PORT, "/stream/")
    stream.start()
    sockets = [WebSocketEcho(PORT, "/demo/ws", every=0.5, host="ws.test") for _ in range(WEBSOCKETS)]
    for ws in sockets:
        ws.start()
    for ws in sockets:
        assert ws.open.wait(15) and ws.error is None, ws.error
    master = stack.nginx.master_pid()
    generations = WorkerGenerations(master)
    generations.start()
    load = KeepAliveLoad("127.0.0.1", PORT, connections=20, rate=21, max_seconds=600).start()   # 420 paced, 400 asserted
    churn = RouteChurn(stack, ROUTES)
    churn.start()
    try:
        for i in range(1, DEPLOYS + 1):
            image, answer = ("demo:v2", "v2") if i % 2 else ("demo:v1", "v1")
            deploy_and_wait(stack, f"d{i}", image, f"{answer}-{i}")
        churn.join(300)
    finally:
        load.finish()
        reloads = generations.finish()
        churn.clean_up()
    rate = load.total / load.elapsed
    assert churn.error is None and churn.added == ROUTES and churn.seen == ROUTES // 20, churn.error
    assert load.failures == [], f"{len(load.failures)} of {load.total} failed: {load.failures[:5]}"
    assert rate >= 400, f"the load was only {rate:.0f} req/s"
    assert reloads == 0, f"nginx started {reloads} new worker generation(s) during {DEPLOYS} deploys"
    assert stack.nginx.master_pid() == master
    # every WebSocket opened before is still open and answering, in order
    for ws in sockets:
        answers = ws.finish()
        assert ws.error is None, f"a WebSocket closed: {ws.error!r}"
        assert len(answers) > 20 and answers == [f"v1: m{n}" for n in range(len(answers))]
    # the stream opened before the deploys is still open and still receiving
    time.sleep(1.0)
    assert stream.error is None, stream.error
    assert time.monotonic() - stream.last_at < 1.0, "the stream stopped receiving"
    assert stream.lines > 50
    stream.close()


def test_an_instance_killed_under_keep_alive_load_costs_no_client_error(stack):
    current = serving_demo(stack)
    stack.deploy("twin", "demo:v2" if current.startswith("v2") else "demo:v1", **{"gatekeeper.version": current})
    stack.wait(lambda: len(stack.proxy_status("/services/demo")["stable"]["servers"]) == 2, 120,
               "two admitted instances")
    generations = WorkerGenerations(stack.nginx.master_pid())
    generations.start()
    load = KeepAliveLoad("127.0.0.1", PORT, connections=20, rate=20, max_seconds=60).start()
    time.sleep(2)
    stack.containers["twin"].kill()
    stack.wait(lambda: len(stack.proxy_status("/services/demo")["stable"]["servers"]) == 1, 30,
               "the killed instance out of the table")
    time.sleep(2)
    load.finish()
    assert load.failures == [], f"{len(load.failures)} of {load.total} failed: {load.failures[:5]}"
    assert generations.finish() == 0


def test_a_burst_of_forty_containers_of_a_new_service_costs_no_reload(stack, docker_client):
    serving_demo(stack)
    generations = WorkerGenerations(stack.nginx.master_pid())
    generations.start()
    load = KeepAliveLoad("127.0.0.1", PORT, connections=20, rate=10, max_seconds=300).start()
    # A new route of its own: the demo app's path under a Host of its own.
    labels = {"SERVICE_NAME": "burst", "proxy.host": "burst.test", "proxy.path": "/demo/",
              "gatekeeper.tests": "demo-test:latest",
              "gatekeeper.version": "v2", "proxystack.test": stack.session, "proxystack.e2e": stack.session}
    for i in range(40):
        stack.containers[f"burst{i}"] = docker_client.containers.run(
            "demo:v2", detach=True, name=f"e2e-{stack.session}-burst{i}", publish_all_ports=True, labels=labels)

    def admitted():
        route = stack.proxy_status("/services/burst")
        return len((route.get("stable") or {}).get("servers", []))
    stack.wait(lambda: admitted() == 40, 150, "all 40 admitted")
    load.finish()
    reloads = generations.finish()
    status, body = stack.get("/demo/1", headers={"Host": "burst.test"})
    assert status == 200 and body["version"] == "v2"
    assert reloads == 0, f"{reloads} worker generations for one new route"
    assert load.failures == [], f"{len(load.failures)} of {load.total} failed: {load.failures[:5]}"
