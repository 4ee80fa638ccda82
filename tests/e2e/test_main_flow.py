"""The main job end to end on the real Docker Engine, Consul and nginx.

The stack's three daemons run as real processes against a test Consul server and an nginx
on 127.0.0.1:18000; the demo service is deployed with `docker run` and labels only.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from tests.conftest import SESSION, host_port
from testbed.load import LoadClient
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

LISTEN_PORT = 18000


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    # --keep-versions 0: a drained version's stopped containers are removed unless it is the rollback target
    s = Stack(consul_server, tmp_path_factory.mktemp("e2e"), docker_client, SESSION, LISTEN_PORT,
              gatekeeper_args=("--keep-versions", "0")).start()
    yield s
    s.stop()


def wait(stack, predicate, timeout, what):
    return stack.wait(predicate, timeout, what)


class TestMainFlow:
    def test_1_v1_is_registered_tested_admitted_and_served(self, stack):
        status, body = stack.get()
        assert status == 503 or status == 404, "nothing is admitted yet"
        v1 = stack.deploy("v1", "demo:v1")
        ri = wait(stack, lambda: stack.instance(v1), 30, "v1 registered in Consul")
        assert ri.instance.port == host_port(v1) and ri.instance.address == "127.0.0.1"
        assert ri.instance.tests_image == "demo-test:latest" and ri.instance.version == "v1"
        wait(stack, lambda: stack.served_version() == "v1", 90, "the proxy to serve v1")
        assert stack.get() == (200, {"id": 1, "rec": 7671, "version": "v1"})
        assert stack.instance(v1).gate_output.startswith("9/9 passed")

    def test_2_v2_takes_over_with_zero_failed_requests(self, stack):
        load = LoadClient("127.0.0.1", LISTEN_PORT, max_seconds=150)
        load.start()
        time.sleep(0.5)
        stack.deploy("v2", "demo:v2")
        wait(stack, lambda: stack.served_version() == "v2", 90, "the proxy to serve v2")
        v1 = stack.containers["v1"]
        wait(stack, lambda: (v1.reload(), v1.status)[1] != "running", 30, "v1 to be drained and stopped")
        time.sleep(1.0)
        load.finish()
        assert load.failures == [], f"{len(load.failures)} of {load.total} failed: {load.failures[:5]}"
        assert load.versions["v1"] > 0 and load.versions["v2"] > 0, load.versions
        assert {stack.served_version() for _ in range(30)} == {"v2"}

    def test_3_broken_build_fails_its_tests_and_never_gets_a_request(self, stack):
        v3 = stack.deploy("v3", "demo:v3")
        ri = wait(stack, lambda: (lambda r: r if r and "failed" in r.gate_output else None)(stack.instance(v3)),
                  90, "v3's gate verdict")
        assert ri.gate_status == "critical" and "failed: rec_shape" in ri.gate_output
        verdict = stack.stores.verdicts.get(ri.instance.id)
        assert verdict.state == "failed" and "FAIL rec_shape" in verdict.log_tail
        assert [stack.served_version() for _ in range(100)] == ["v2"] * 100
        with urllib.request.urlopen(f"http://127.0.0.1:{host_port(v3)}/stats", timeout=5) as r:
            assert json.loads(r.read())["proxied"] == 0
        code, out, _ = stack.gatekeeper_cli("wait", "demo", "--version", "v3", "--timeout", "30")
        assert code == 1 and "tests failed" in out, "a CD job gets a no"
        code, out, _ = stack.gatekeeper_cli("wait", "demo", "--version", "v2", "--timeout", "30", "--json")
        assert code == 0 and json.loads(out)["result"] == "served"
        code, out, _ = stack.gatekeeper_cli("wait", "demo", "--version", "v99", "--timeout", "1")
        assert code == 4 and "timed out" in out

    def test_4_a_stopped_container_is_deregistered_and_leaves_the_proxy(self, stack):
        extra = stack.deploy("v2b", "demo:v2")
        server = f"127.0.0.1:{host_port(extra)}"
        served = lambda: stack.proxy_status("/services/demo")["stable"]["servers"]
        wait(stack, lambda: server in served(), 90, "v2b served by nginx")
        extra.stop(timeout=5)
        wait(stack, lambda: stack.instance(extra) is None, 20, "v2b deregistered")
        wait(stack, lambda: server not in served(), 20, "v2b out of nginx")
        assert stack.served_version() == "v2"

    def test_5_registrator_restart_loses_nothing_and_resets_no_verdict(self, stack):
        v2 = stack.containers["v2"]
        before = stack.instance(v2)
        verdict_before = stack.stores.verdicts.get(before.instance.id)
        gate_seen, stop = set(), threading.Event()

        def watch_gate():
            while not stop.is_set():
                ri = stack.instance(v2)
                gate_seen.add(ri.gate_status if ri else "missing")
                time.sleep(0.05)

        watcher = threading.Thread(target=watch_gate, daemon=True)
        watcher.start()
        load = LoadClient("127.0.0.1", LISTEN_PORT, max_seconds=60)
        load.start()
        stack.registrator.kill()                       # SIGKILL: no chance to clean up
        # While it is down: a container goes away and another arrives; only the new
        # registrator's resync can set both right.
        gone = stack.containers.pop("v3")
        gone_id = stack.instance(gone).instance.id
        gone.remove(force=True)
        arrived = stack.deploy("v2c", "demo:v2")
        offset = len(stack.registrator.log())
        stack.registrator = stack._registrator().start()
        wait(stack, lambda: "sync:" in stack.registrator.log()[offset:], 30, "the restarted registrator's resync")
        wait(stack, lambda: stack.instance(arrived) is not None, 20, "the container started meanwhile, registered")
        assert gone_id not in [ri.instance.id for ri in stack.stores.instances.of("demo")], "the removed one, gone"
        assert stack.registrator.alive()
        time.sleep(2)
        load.finish()
        stop.set()
        watcher.join(5)
        ids = [ri.instance.id for ri in stack.stores.instances.of("demo")]
        running = [c for c in stack.containers.values() if (c.reload(), c.status)[1] == "running"]
        assert sorted(ids) == sorted(f"e2e:{c.name}:8080" for c in running), "no duplicate, none lost"
        assert gate_seen == {"passing"}, f"v2's gate left passing during the restart: {gate_seen}"
        assert stack.stores.verdicts.get(before.instance.id) == verdict_before
        assert load.failures == [], load.failures[:5]
        assert load.versions == {"v2": load.total}

    def test_6_a_rollback_after_the_drain_starts_the_drained_containers_and_they_take_the_traffic_back(self, stack):
        """v1 was drained and stopped when v2 took over (test 2): nothing of it is admitted, so
        `gatekeeper rollback` asks the leader to start the containers the drain stopped (on their
        own host, through its registrator); started, v1 is tested again and stable again, with no
        failed request."""
        v1 = stack.containers["v1"]
        assert (v1.reload(), v1.status)[1] == "exited"
        drained = [e for e in stack.stores.history.of("demo") if e["event"] == "drained"]
        assert drained and drained[-1]["version"] == "v1" and drained[-1]["containers"][0]["name"] == v1.name
        load = LoadClient("127.0.0.1", LISTEN_PORT, max_seconds=120)
        load.start()
        code, out, err = stack.gatekeeper_cli("rollback", "demo")
        # on the host whose Consul agent registered it (this machine's, here)
        assert code == 0 and f"start them ({v1.name} on proxystack-test)" in out, out + err
        wait(stack, lambda: stack.served_version() == "v1", 90, "v1 started, tested again and stable again")
        wait(stack, lambda: load.versions.get("v1", 0) > 0, 10, "the load's requests to reach v1 too")
        load.finish()
        assert (v1.reload(), v1.status)[1] == "running"
        policy = stack.stores.policies.get("demo")[1]
        assert (policy.stable, policy.previous) == ("v1", "v2")
        events = [e["event"] for e in stack.stores.history.of("demo")]
        assert events[-2:] == ["rollback asked", "rolled back"], events[-4:]
        assert stack.stores.policies.rollback("demo")[1] is None, "the request is cleared once done"
        assert load.failures == [], load.failures[:5]
        assert load.versions.get("v1", 0) > 0

    def test_7_a_drained_version_past_the_ones_kept_is_removed_and_the_rollback_target_is_kept(self, stack):
        """v1 is stable again and v2 still runs (test 6). A new version takes over: both old ones
        are drained; v1 is the rollback target, so its stopped container is kept; v2's is removed
        on its host (--keep-versions 0), with the reason in the history."""
        load = LoadClient("127.0.0.1", LISTEN_PORT, max_seconds=120)
        load.start()
        v5 = stack.deploy("v5", "demo:v2", **{"gatekeeper.version": "v5"})     # the app says v2; Consul v5
        wait(stack, lambda: stack.proxy_serves([v5]), 90, "v5 tested, stable and served")
        v1, v2 = stack.containers["v1"], stack.containers["v2"]
        wait(stack, lambda: not stack.docker.containers.list(all=True, filters={"id": v2.id}), 60,
             "v2's container to be removed")
        load.finish()
        assert (v1.reload(), v1.status)[1] == "exited", "the rollback target's container is kept, stopped"
        removed = [e for e in stack.stores.history.of("demo") if e["event"] == "removed"]
        assert [e["version"] for e in removed] == ["v2"] and v2.name in [c["name"] for c in removed[0]["containers"]]
        assert "--keep-versions" in removed[0]["reason"]
        names = {c["name"] for c in removed[0]["containers"]}      # every v2 container the drain stopped (v2c too)
        wait(stack, lambda: not names & {c.name for c in stack.docker.containers.list(all=True, ignore_removed=True)},
             30, f"{sorted(names)} removed")
        assert load.failures == [], load.failures[:5]
