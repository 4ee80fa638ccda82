"""An operator's day on the real stack: every question has a command, every answer is true, and
every mess can be cleaned up (a service whose test image comes late, why an instance is not
served, rejections and verdicts of gone containers, forgetting a service, trying an aborted
canary again, machine-readable errors, and a path prefix the service does not see)."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import SESSION
from testbed.processes import get_json, python_module
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT = 18009


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    s = Stack(consul_server, tmp_path_factory.mktemp("opday"), docker_client, f"{SESSION}od", PORT,
              service="opday", gatekeeper_args=("--keep-old", "--forget-after", "3")).start()
    yield s
    s.stop()


def deploy(stack, name, image, service, **labels):
    """Each service at /SERVICE/, forwarded without it: /SERVICE/version reaches the app's /version."""
    return stack.deploy(name, image, **{"SERVICE_NAME": service, "proxy.path": f"/{service}/",
                                        "proxy.strip_prefix": "true", **labels})


def status_of(port, path):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def version_at(stack, service, headers=None):
    status, body = stack.get(f"/{service}/version", headers)
    return body.get("version") if status == 200 else status


def cli_json(stack, *args):
    code, out, err = stack.gatekeeper_cli(*args, "--json")
    return code, json.loads(out) if out.strip() else None, err


def instance_of(stack, service, container):
    return next((ri for ri in stack.stores.instances.of(service) if ri.instance.container_id == container.id), None)


def test_a_default_test_image_set_after_the_fact_tests_admits_and_routes_the_waiting_instance(stack):
    c = deploy(stack, "late", "demo:v1", "odlate", **{"gatekeeper.tests": ""})
    stack.wait(lambda: (lambda ri: ri and (stack.stores.verdicts.get(ri.instance.id) or None)
                        and stack.stores.verdicts.get(ri.instance.id).state == "error")(instance_of(stack, "odlate", c)),
               60, "an error verdict for want of a test image")
    code, why, _ = cli_json(stack, "why", "odlate")
    assert code == 0 and "gatekeeper tests odlate IMAGE" in why["services"][0]["instances"][0]["why"]
    code, out, err = stack.gatekeeper_cli("tests", "odlate", "demo-test:latest")
    assert code == 0 and "1 instance(s) that had no test image will be tested now" in out, out + err
    code, out, err = stack.gatekeeper_cli("wait", "odlate", "--version", "v1", "--timeout", "90")
    assert code == 0, out + err + stack.logs()
    assert stack.stores.policies.get("odlate")[1].stable == "v1", "its first admission created the routing policy"
    assert version_at(stack, "odlate") == "v1"


def good_v1_and_failed_v3(stack, service, prefix=""):
    """v1 served, then a v3 whose tests fail: (v3's container, its instance id)."""
    deploy(stack, f"{prefix}good", "demo:v1", service)
    stack.wait(lambda: stack.gatekeeper_cli("wait", service, "--version", "v1", "--timeout", "5")[0] == 0, 90,
               "v1 served")
    bad = deploy(stack, f"{prefix}bad", "demo:v3", service)
    stack.wait(lambda: (lambda ri: ri and stack.stores.verdicts.get(ri.instance.id)
                        and stack.stores.verdicts.get(ri.instance.id).state == "failed")(instance_of(stack, service, bad)),
               90, "v3's tests to fail")
    return bad, instance_of(stack, service, bad).instance.id


def test_why_shows_the_failing_tests_output_and_status_says_what_is_served(stack):
    bad, iid = good_v1_and_failed_v3(stack, "odwhy")
    code, out, err = stack.gatekeeper_cli("why", iid)
    assert code == 0, err
    assert "NOT SERVING: tests failed" in out and "test output (last lines):" in out
    assert "rec_shape" in out.split("test output (last lines):", 1)[1], "the failing check's own message"
    code, data, _ = cli_json(stack, "why", iid)
    inst = data["services"][0]["instances"][0]
    assert inst["serving"] is False and inst["state"] == "tests failed" and "rec_shape" in inst["log_tail"]
    assert set(inst["checks"]) == {iid + ":gate", "serfHealth"} and data["services"][0]["proxies"], \
        "its own gate and its host's liveness; the proxies' reports shown"
    code, out, _ = stack.gatekeeper_cli("status", "odwhy")
    assert "proxy    answers 200 from v1" in out and "no: tests failed" in out and "yes: stable" in out


def test_rejections_show_under_their_service_and_verdicts_of_gone_containers_are_forgotten(stack):
    bad = deploy(stack, "uxbad", "demo:v1", "uxbad", **{"proxy.path": "/a b/"})
    stack.wait(lambda: bad.name in stack.stores.rejections.all(), 30, "the rejection")
    code, data, err = cli_json(stack, "status", "uxbad")
    assert code == 0, err
    assert list(data["services"][0]["rejected"]) == [bad.name] and "proxy.path" in \
        data["services"][0]["rejected"][bad.name]["reason"]
    code, out, _ = stack.gatekeeper_cli("why", bad.name)
    assert code == 0 and f"container {bad.name} was not registered" in out
    code, out, _ = stack.gatekeeper_cli("status")
    assert "service uxbad" in out, "plain status lists a service whose only container was rejected"

    c = deploy(stack, "short", "demo:v1", "odgc")
    stack.wait(lambda: instance_of(stack, "odgc", c) and instance_of(stack, "odgc", c).admitted, 90, "admitted")
    iid = instance_of(stack, "odgc", c).instance.id
    c.remove(force=True)
    stack.wait(lambda: stack.stores.verdicts.get(iid) is None, 30, "the gone instance's verdict removed (--forget-after 3)")
    assert any(e["event"] == "promoted" for e in stack.stores.history.of("odgc")), "history keeps what happened"


def test_a_service_without_instances_is_listed_with_what_the_proxy_answers_and_can_be_forgotten(stack):
    c = deploy(stack, "forgetme", "demo:v1", "odforget")
    stack.wait(lambda: stack.gatekeeper_cli("wait", "odforget", "--version", "v1", "--timeout", "5")[0] == 0,
               90, "served")
    code, data, _ = cli_json(stack, "forget", "odforget")
    assert code == 1 and "still has 1 registered instance" in data["error"] and data["exit"] == 1
    c.remove(force=True)
    stack.wait(lambda: not stack.stores.instances.of("odforget"), 30, "deregistered")
    stack.wait(lambda: stack.get("/odforget/1")[0] == 404, 30, "the route gone from nginx")
    code, data, _ = cli_json(stack, "status")
    entry = next(s for s in data["services"] if s["service"] == "odforget")
    assert entry["proxy_answers"].startswith("404") and entry["policy"]["stable"] == "v1"
    code, data, err = cli_json(stack, "forget", "odforget")
    assert code == 0 and "gatekeeper/policies/odforget" in data["removed"], err
    assert stack.stores.policies.get("odforget")[1] is None and stack.stores.history.of("odforget") == []
    code, data, _ = cli_json(stack, "status", "odforget")
    assert code == 1 and "unknown service 'odforget'" in data["error"]


def test_an_aborted_canary_says_so_and_can_be_tried_again_without_a_redeploy(stack):
    deploy(stack, "c1", "demo:v1", "odcan")
    stack.wait(lambda: stack.gatekeeper_cli("wait", "odcan", "--version", "v1", "--timeout", "5")[0] == 0, 90,
               "v1 stable")
    assert stack.gatekeeper_cli("mode", "odcan", "manual")[0] == 0
    deploy(stack, "c2", "demo:v2", "odcan")
    stack.wait(lambda: stack.stores.policies.get("odcan")[1].canary == "v2", 90, "v2 the canary")
    assert stack.gatekeeper_cli("abort", "odcan")[0] == 0
    code, out, _ = stack.gatekeeper_cli("status", "odcan")
    assert "no: aborted" in out and "aborted v2" in out
    code, data, err = cli_json(stack, "canary", "odcan", "v2")
    assert code == 0 and data["policy"]["canary"] == "v2" and data["policy"]["aborted"] == "", err
    stack.wait(lambda: version_at(stack, "odcan", {"X-Canary": "always"}) == "v2", 20, "the canary back in nginx")
    assert version_at(stack, "odcan", {"X-Client-Id": "someone"}) == "v1", "at 0% only X-Canary reaches it"
    assert [e["event"] for e in stack.stores.history.of("odcan")][-2:] == ["aborted", "canary"]


def test_json_errors_and_the_shared_exit_codes(stack):
    deploy(stack, "j1", "demo:v1", "odjson")
    stack.wait(lambda: stack.gatekeeper_cli("wait", "odjson", "--version", "v1", "--timeout", "5")[0] == 0, 90,
               "served")
    for args, code, text in [(("status", "nosuch"), 1, "unknown service 'nosuch'"),
                             (("promote", "odjson"), 1, "no canary to promote"),
                             (("weight", "odjson", "150"), 2, "0 to 100"),
                             (("status", "Bad;Name"), 2, "DNS label"),
                             (("wait", "odjson", "--version", "v9", "--timeout", "1"), 4, "timed out"),
                             (("status", "--bogus"), 2, "unrecognized arguments")]:
        got, out, err = stack.gatekeeper_cli(*args, "--json")
        assert got == code, (args, out, err)
        data = json.loads(out)
        assert data["exit"] == code and data["ok"] is False and text in data["error"], (args, data)
    res = subprocess.run(python_module("gatekeeper", "--consul", stack.consul.address, "status", "--json"),
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 3 and "CONSUL_HTTP_TOKEN_FILE" in json.loads(res.stdout)["error"], res.stderr


def test_strip_prefix_forwards_the_rest_of_the_path_only(stack):
    deploy(stack, "strip", "demo:v1", "uxp", **{"proxy.strip_prefix": "true"})
    deploy(stack, "keep", "demo:v2", "uxk", **{"proxy.strip_prefix": "false"})
    stack.wait(lambda: stack.gatekeeper_cli("wait", "uxp", "--version", "v1", "--timeout", "5")[0] == 0, 90, "uxp")
    stack.wait(lambda: stack.gatekeeper_cli("wait", "uxk", "--version", "v2", "--timeout", "5")[0] == 0, 90, "uxk")
    assert stack.get("/uxp/version") == (200, {"version": "v1"}), "/uxp/version reaches the app as /version"
    status, body = stack.get("/uxp/demo/1")
    assert status == 200 and body["version"] == "v1"
    assert status_of(PORT, "/uxk/version") == 404, "without the label the prefix is kept: the app has no /uxk/version"
    assert status_of(PORT, "/uxk/demo/1") == 404 and status_of(PORT + 1000, "/services/uxk") == 200
    assert get_json(PORT + 1000, "/services/uxp")[1]["strip_prefix"] is True


def test_a_failed_instance_is_admitted_only_by_the_break_glass_token_and_history_says_who_and_why(stack):
    """The operator's token cannot admit what its tests failed (it may not write verdicts); the
    breakglass token can, with a reason, and the service's history keeps it."""
    bad, iid = good_v1_and_failed_v3(stack, "odforce", "force-")
    code, out, err = stack.gatekeeper_cli("admit", iid, "--reason", "hotfix, tests broken upstream")
    assert code == 1 and "breakglass token" in err, out + err
    assert stack.stores.verdicts.get(iid).state == "failed" and not instance_of(stack, "odforce", bad).admitted

    code, out, err = stack.gatekeeper_cli("admit", iid, "--reason", "hotfix, tests broken upstream", "--json",
                                          token="breakglass")
    assert code == 0, out + err
    assert json.loads(out) == {"admitted": iid, "version": "v3", "reason": "hotfix, tests broken upstream",
                               "routed": False}
    stack.wait(lambda: instance_of(stack, "odforce", bad).admitted, 30, "gatekeeper to open the forced gate")
    assert instance_of(stack, "odforce", bad).gate_output == "forced admission: hotfix, tests broken upstream"
    history = json.loads(stack.gatekeeper_cli("history", "odforce", "--json")[1])["history"]
    forced = [h for h in history if h["event"] == "forced admission"]
    assert forced and forced[-1]["instance"] == iid and forced[-1]["by"] == "operator (break-glass)", history
    assert version_at(stack, "odforce") == "v1", "admitted is not routed: v3 waits for the operator"
    code, out, err = stack.gatekeeper_cli("canary", "odforce", "v3")
    assert code == 0, out + err
