"""`gatekeeper wait` exits 0 only once the proxy serves the version: a request sent the moment
it exits gets the new version, deploy after deploy (new services and upgrades), on the real
stack; and the drain after a promotion stops the old version only once every live proxy serves
the new one. The proxy announces itself in Consul (--report-check), as the stack's does."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import SESSION
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT = 18008
DEPLOYS = 20


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    # A proxy that takes its time (0.5 s of quiescence, as a busy or distant one might): a wait
    # that trusted the routing policy alone would exit before this proxy serves the version.
    s = Stack(consul_server, tmp_path_factory.mktemp("wait"), docker_client, f"{SESSION}wt", PORT,
              drain_seconds=2, service="waitdemo", proxy_args=("--min-wait", "0.5", "--max-wait", "1")).start()
    yield s
    s.stop()


def test_a_request_sent_the_moment_wait_exits_gets_the_new_version(stack, docker_client):
    misses = []
    for i in range(DEPLOYS):
        image, answer = ("demo:v2", "v2") if i % 4 < 2 else ("demo:v1", "v1")
        if i % 2 == 0:      # a service nobody has routed yet, at a Host of its own
            service, host = f"wnew{i}", f"wnew{i}.test"
            labels = {"SERVICE_NAME": service, "proxy.host": host}
        else:               # a new version of the one long-lived service
            service, host, labels = "waitdemo", "", {}
        version = f"r{i}"
        stack.deploy(f"d{i}", image, **{"gatekeeper.version": version, **labels})
        code, out, err = stack.gatekeeper_cli("wait", service, "--version", version, "--timeout", "120")
        status, body = stack.get("/demo/1", headers={"Host": host} if host else None)
        assert code == 0, f"deploy {i}: wait exited {code}: {out} {err}\n{stack.logs()}"
        if status != 200 or body.get("version") != answer:
            misses.append(f"deploy {i} ({service} {version}): {status} {body}")
    assert misses == [], f"{len(misses)} of {DEPLOYS} answered wrong right after wait: {misses}"


def test_wait_names_the_proxy_that_has_not_served_it_yet(stack, stores):
    """A proxy that announced itself but serves nothing of the service keeps wait waiting, and
    wait says which one (here: a registration that no proxy-reloader runs behind)."""
    ghost = stores.proxies.self_report("proxy-reloader", "proxy-reloader:ghost", "127.0.0.1:1")
    ghost(True, "a proxy that never serves anything")
    try:
        stack.deploy("ghost", "demo:v1", **{"gatekeeper.version": "rghost"})
        code, out, _ = stack.gatekeeper_cli("wait", "waitdemo", "--version", "rghost", "--timeout", "15")
        assert code == 4 and "proxy-reloader:ghost" in out
    finally:
        stores.instances.deregister("proxy-reloader:ghost")


def test_a_proxy_that_is_not_alive_is_named_at_once_and_not_waited_for(stack, stores):
    """A proxy killed without a word (SIGKILL, its host gone) stops passing its `:alive` check;
    Consul turns it critical after the TTL (1 s here, 30 s as proxy-reloader registers it). wait
    names it in its first lines and does not wait for it; the stack's own proxy, which has run
    for longer than its TTL by now, is alive and confirms the version."""
    dead = stores.proxies.self_report("proxy-reloader", "proxy-reloader:dead", "127.0.0.1:2", alive_ttl="1s")
    dead(True, "a proxy killed without a word")
    try:
        stack.wait(lambda: [p for p in stores.proxies.all() if p.id == "proxy-reloader:dead" and not p.alive], 30,
                   "Consul to expire the dead proxy's heartbeat")
        own = next(p for p in stores.proxies.all() if p.id == f"proxy-reloader:127.0.0.1:{PORT}")
        assert own.alive, own
        stack.deploy("after-dead", "demo:v1", **{"gatekeeper.version": "rdead"})
        code, out, err = stack.gatekeeper_cli("wait", "waitdemo", "--version", "rdead", "--timeout", "120")
        assert code == 0, out + err
        lines = out.splitlines()
        assert lines[0].startswith("not waiting for proxy proxy-reloader:dead: it is not alive (TTL expired)"), out
        assert "waitdemo rdead: admitted and stable" in lines[-1] and "proxy-reloader:dead" in lines[-1], out
        assert stack.served_version() == "v1"
        status = json.loads(stack.gatekeeper_cli("why", "waitdemo", "--json")[1])
        assert status["services"][0]["proxies_not_alive"] == {"proxy-reloader:dead": "TTL expired"}, status
    finally:
        stores.instances.deregister("proxy-reloader:dead")


def test_a_proxy_listening_on_every_address_announces_itself_at_its_nodes_address(stores):
    """--listen 0.0.0.0:80 (Ansible's default): Consul refuses 0.0.0.0 as a service address, and
    the proxy would not start; it registers with its node's address instead."""
    report = stores.proxies.self_report("proxy-reloader", "proxy-reloader:0.0.0.0:80", "0.0.0.0:80")
    try:
        entry = next(e for e in stores.consul.health_service("proxy-reloader")
                     if e["Service"]["ID"] == "proxy-reloader:0.0.0.0:80")
        assert entry["Service"]["Address"] == "" and entry["Service"]["Port"] == 80
        assert entry["Node"]["Address"]
        report(True, "serving")
    finally:
        stores.proxies.withdraw("proxy-reloader:0.0.0.0:80")


def test_the_old_version_is_stopped_only_once_every_live_proxy_serves_the_new_one(stack, stores):
    """A second proxy that has not applied the promotion yet (busy with other changes, or
    restarting: here a registration whose reports the test writes) still routes the old
    version, so the drain holds its containers past --drain-seconds (2 s here) until that
    proxy reports serving the new version; then they are stopped, and the history says so."""
    old = stack.deploy("drain-old", "demo:v1", **{"gatekeeper.version": "rdrain1"})
    code, out, err = stack.gatekeeper_cli("wait", "waitdemo", "--version", "rdrain1", "--timeout", "120")
    assert code == 0, out + err
    slow_id = "proxy-reloader:slow"
    slow = stores.proxies.self_report("proxy-reloader", slow_id, "127.0.0.1:3", alive_ttl="600s")
    slow(True, "a proxy that has not applied the promotion yet")
    try:
        stores.proxies.report(slow_id, "waitdemo", {"stable": "rdrain1"})
        stack.deploy("drain-new", "demo:v2", **{"gatekeeper.version": "rdrain2"})
        stack.wait(lambda: stack.served_version() == "v2", 120, "the stack's own proxy to serve rdrain2")
        time.sleep(2 + 4)                                   # the drain period, and then some
        old.reload()
        assert old.status == "running", "stopped while a live proxy still routed it"
        assert not [e for e in stores.history.of("waitdemo") if e.get("event") == "drained"
                    and e.get("stable") == "rdrain2"]
        stores.proxies.report(slow_id, "waitdemo", {"stable": "rdrain2"})     # it switched
        stack.wait(lambda: (old.reload(), old.status)[1] != "running", 30, "the old container drained")
        drained = [e for e in stores.history.of("waitdemo") if e.get("event") == "drained" and e.get("stable") == "rdrain2"]
        assert old.name in {c["name"] for e in drained if e.get("version") == "rdrain1" for c in e["containers"]}, drained
    finally:
        stores.instances.deregister(slow_id)
        stores.proxies.forget(slow_id)
