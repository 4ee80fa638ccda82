"""Promotion on the real stack: manual mode, canary weights, header/cookie matches, stickiness,
promote, abort, rollback, auto-rollback, retest, and the gate's failure states."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import SESSION
from tests.faults.test_registrator_lifecycle import build_healthcheck_image
from testbed.load import LoadClient
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT = 18001
SERVICE = "promo"


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    s = Stack(consul_server, tmp_path_factory.mktemp("promo"), docker_client, SESSION + "p", PORT,
              service=SERVICE, gatekeeper_args=("--keep-old", "--reverify-every", "15")).start()
    yield s
    s.stop()


def wait(stack, predicate, timeout, what):
    return stack.wait(predicate, timeout, what)


def policy(stack):
    return stack.stores.policies.get(SERVICE)[1]


def versions_for(stack, n, headers=lambda i: {}):
    return [stack.served_version(headers(i)) for i in range(n)]


class TestCanary:
    def test_1_manual_mode_makes_a_passed_version_a_canary_at_zero(self, stack):
        stack.deploy("v1", "demo:v1")
        wait(stack, lambda: stack.served_version() == "v1", 90, "v1 served")
        code, out, err = stack.gatekeeper_cli("mode", SERVICE, "manual")
        assert code == 0 and "manual" in out, err
        stack.deploy("v2", "demo:v2")
        wait(stack, lambda: policy(stack).canary == "v2", 90, "v2 to become the canary")
        assert policy(stack).weight == 0 and policy(stack).stable == "v1"
        assert set(versions_for(stack, 50, lambda i: {"X-Client-Id": f"c{i}"})) == {"v1"}

    def test_2_weight_20_sends_20_percent_of_clients_to_the_canary(self, stack):
        code, out, _ = stack.gatekeeper_cli("weight", SERVICE, "20")
        assert code == 0 and "20%" in out
        wait(stack, lambda: (stack.proxy_status(f"/services/{SERVICE}")["canary"] or {}).get("weight") == 20, 20,
             "the split served by nginx")
        seen = versions_for(stack, 1000, lambda i: {"X-Client-Id": uuid.uuid4().hex})
        share = seen.count("v2") / len(seen)
        assert 0.15 <= share <= 0.25, f"canary share {share:.1%}"
        assert set(seen) == {"v1", "v2"}

    def test_3_one_client_stays_on_one_version(self, stack):
        for i in range(20):
            client = {"X-Client-Id": f"sticky-{i}"}
            assert len(set(versions_for(stack, 10, lambda _: client))) == 1

    def test_4_header_and_cookie_matches_always_reach_the_canary(self, stack):
        assert set(versions_for(stack, 50, lambda i: {"X-Canary": "always", "X-Client-Id": f"h{i}"})) == {"v2"}
        assert set(versions_for(stack, 50, lambda i: {"Cookie": "canary=always", "X-Client-Id": f"k{i}"})) == {"v2"}

    def test_5_promote_steps_then_full(self, stack):
        code, out, _ = stack.gatekeeper_cli("promote", SERVICE, "--json")
        assert code == 0 and json.loads(out)["policy"]["weight"] == 25
        code, out, _ = stack.gatekeeper_cli("promote", SERVICE, "--full")
        assert code == 0 and "v2 is now stable" in out
        wait(stack, lambda: set(versions_for(stack, 20, lambda i: {"X-Client-Id": f"p{i}"})) == {"v2"}, 20,
             "all traffic on v2")
        assert policy(stack).previous == "v1"

    def test_6_rollback_restores_the_old_version_with_zero_failed_requests(self, stack):
        load = LoadClient("127.0.0.1", PORT, max_seconds=60)
        load.start()
        code, out, err = stack.gatekeeper_cli("rollback", SERVICE)
        assert code == 0, err
        wait(stack, lambda: stack.served_version() == "v1", 20, "v1 served again")
        import time
        time.sleep(1)
        load.finish()
        assert load.failures == [], load.failures[:5]
        assert load.versions["v1"] > 0

    def test_7_abort_takes_the_canary_out_and_history_says_so(self, stack):
        # the v2 image (it answers "version": "v2") deployed as version v4
        stack.deploy("v4", "demo:v2", **{"gatekeeper.version": "v4"})
        wait(stack, lambda: policy(stack).canary == "v4", 90, "v4 canary")
        assert stack.gatekeeper_cli("weight", SERVICE, "50")[0] == 0
        wait(stack, lambda: "v2" in versions_for(stack, 20, lambda i: {"X-Client-Id": f"a{i}"}), 20, "v4 serving")
        code, out, _ = stack.gatekeeper_cli("abort", SERVICE)
        assert code == 0 and "aborted" in out and "serves all traffic" in out
        wait(stack, lambda: set(versions_for(stack, 40, lambda i: {"X-Client-Id": f"b{i}"})) == {"v1"}, 20,
             "the canary out of traffic")
        code, out, _ = stack.gatekeeper_cli("history", SERVICE, "--json")
        answer = json.loads(out)
        assert answer["service"] == SERVICE
        events = [e["event"] for e in answer["history"]]
        assert events[-1] == "aborted" and "promoted" in events and "rolled back" in events

    def test_8_a_canary_that_turns_unhealthy_is_aborted_automatically(self, stack, docker_client):
        tag = build_healthcheck_image(docker_client)
        try:
            c = stack.deploy("v5", tag, **{"gatekeeper.version": "v5"})
            c.exec_run(["touch", "/tmp/ready"])
            wait(stack, lambda: policy(stack).canary == "v5", 90, "v5 canary")
            c.exec_run(["touch", "/tmp/sick"])
            wait(stack, lambda: policy(stack).canary == "", 25, "the automatic abort (10 s grace + detection)")
            code, out, _ = stack.gatekeeper_cli("history", SERVICE, "--json")
            last = json.loads(out)["history"][-1]
            assert last["event"] == "aborted" and last["by"] == "gatekeeper (auto-rollback)" and "v5" == last["version"]
        finally:
            stack.containers.pop("v5").remove(force=True)
            docker_client.images.remove(tag, force=True)


class TestCommandsAndGate:
    def test_refusals_are_clear_and_exit_1_or_2(self, stack):
        code, _, err = stack.gatekeeper_cli("promote", "nosuchservice")
        assert code == 1 and "unknown service 'nosuchservice'" in err
        code, _, err = stack.gatekeeper_cli("promote", SERVICE)
        assert code == 1 and "no canary to promote" in err
        code, _, err = stack.gatekeeper_cli("weight", SERVICE, "150")
        assert code in (1, 2) and ("0 to 100" in err or "no canary" in err)
        code, _, err = stack.gatekeeper_cli("status", "Bad;Name")
        assert code == 2 and "DNS label" in err
        code, _, err = stack.gatekeeper_cli("frobnicate")
        assert code == 2

    def test_retest_reruns_the_tests_while_the_instance_keeps_serving(self, stack):
        ri = next(r for r in stack.stores.instances.of(SERVICE) if r.instance.version == "v1")
        before = stack.stores.verdicts.get(ri.instance.id)
        code, out, _ = stack.gatekeeper_cli("retest", ri.instance.id)
        assert code == 0 and ri.instance.id in out
        wait(stack, lambda: stack.stores.verdicts.get(ri.instance.id).finished > before.finished, 60, "the retest")
        assert stack.served_version() == "v1"
        assert stack.stores.verdicts.get(ri.instance.id).state == "passed"

    def test_default_tests_and_reverification_take_an_instance_that_starts_failing_out(self, stack, docker_client):
        from tests.integration.test_tester import build
        failing = build(docker_client, "failing-tests", "print('0/1 passed: forced failure'); raise SystemExit(1)")
        try:
            code, out, _ = stack.gatekeeper_cli("tests", SERVICE, "demo-test:latest")
            assert code == 0 and "demo-test:latest" in out
            c = stack.deploy("rv", "demo:v1", **{"gatekeeper.tests": "", "gatekeeper.version": "v8"})
            ri = wait(stack, lambda: (lambda r: r if r and r.gate_status == "passing" else None)(stack.instance(c)),
                      60, "admitted with the default test image")
            assert stack.stores.verdicts.get(ri.instance.id).tests_image == "demo-test:latest"
            assert stack.gatekeeper_cli("tests", SERVICE, failing)[0] == 0
            ri = wait(stack, lambda: (lambda r: r if r and "forced failure" in r.gate_output else None)(stack.instance(c)),
                      90, "re-verification to fail and close the gate")
            assert ri.gate_status == "critical" and not ri.admitted
        finally:
            stack.gatekeeper_cli("tests", SERVICE, "demo-test:latest")
            if "rv" in stack.containers:
                stack.containers.pop("rv").remove(force=True)
            docker_client.images.remove(failing, force=True)

    def test_a_missing_test_image_is_an_error_and_stays_closed(self, stack):
        c = stack.deploy("noimg", "demo:v1", **{"gatekeeper.tests": "proxystack-missing-tests:none",
                                                  "gatekeeper.version": "v6"})
        ri = wait(stack, lambda: (lambda r: r if r and "error" in r.gate_output else None)(stack.instance(c)),
                  60, "the error verdict")
        assert ri.gate_status == "critical" and "not on this engine" in ri.gate_output
        code, out, _ = stack.gatekeeper_cli("status", SERVICE, "--json")
        row = next(i for i in json.loads(out)["services"][0]["instances"] if i["version"] == "v6")
        assert row["verdict"] == "error" and row["serving"] is False
        # Consul lets any service-write token (registrator's) pass a check; gatekeeper fails
        # closed and shuts a gate that has no passing verdict behind it.
        from catalog.stores import Stores
        forger = Stores.connect(stack.consul.address, token=open(stack.consul.token_file("registrator")).read().strip())
        forger.instances.apply_gate(ri.instance, True, "forged")
        wait(stack, lambda: stack.instance(c).gate_status == "critical", 30, "gatekeeper to close the forged gate")
        assert stack.stores.verdicts.get(ri.instance.id).state == "error"

    def test_verdicts_survive_restarts_of_gatekeeper_consul_and_registrator(self, stack):
        ri = next(r for r in stack.stores.instances.of(SERVICE) if r.instance.version == "v1")
        before = stack.stores.verdicts.get(ri.instance.id)
        # gatekeeper stopped as an upgrade or a reboot does (its lock let go: the next one leads at
        # once; a leader killed mid-work is test_leader_failover_to_a_second_daemon's), the others killed
        stack.gatekeeper.stop()
        stack.registrator.kill()
        stack.consul.stop()
        stack.consul.start()
        stack.registrator = stack._registrator().start()
        stack.gatekeeper.start()
        wait(stack, lambda: stack.gatekeeper.log().count("is now the leader") >= 2, 60, "gatekeeper leading again")
        wait(stack, lambda: stack.served_version() == "v1", 30, "v1 served")
        after = stack.instance(stack.containers["v1"])
        assert after.admitted and stack.stores.verdicts.get(ri.instance.id) == before, "no retest, no reset"

    def test_leader_failover_to_a_second_daemon(self, stack, tmp_path):
        from testbed.processes import Proc, python_module
        second = Proc("gatekeeper-2", python_module(
            "gatekeeper", "--consul", stack.consul.address, "--consul-token-file",
            stack.consul.token_file("gatekeeper"), "run", "--wait", "5", "--keep-old", "--id", "second",
            "--test-label", f"proxystack.test={stack.session}"), tmp_path).start()
        try:
            wait(stack, lambda: "second" in second.log(), 10, "the second daemon to start")
            assert "second is now the leader" not in second.log()
            stack.gatekeeper.kill()
            wait(stack, lambda: "second is now the leader" in second.log(), 60, "the second daemon to lead")
            c = stack.deploy("after-failover", "demo:v1", **{"gatekeeper.version": "v7"})
            wait(stack, lambda: (lambda r: r and r.gate_status == "passing")(stack.instance(c)), 60,
                 "the new leader testing a new instance")
        finally:
            second.stop()
            stack.gatekeeper.start()
