"""Progressive mode on the real stack: Prometheus (Debian's) scrapes the proxy, gatekeeper asks
it for the canary's success rate and p99 every interval, and moves the canary on, promotes it or
rolls it back, under load from many clients. Each test has a service of its own (by Host)."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import SESSION
from testbed.dashboard import DashboardServer, browser, forging_page
from testbed.load import ManyClients
from testbed.processes import Proc, PrometheusServer, python_module
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT, PROMETHEUS, DASHBOARD = 18014, 18015, 18018
INTERVAL = 4


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    base = tmp_path_factory.mktemp("progressive")
    prometheus = PrometheusServer(base, consul_server, PROMETHEUS).start()
    try:
        s = Stack(consul_server, base, docker_client, f"{SESSION}pg", PORT, drain_seconds=1, service="pgdemo",
                  gatekeeper_args=("--prometheus", f"http://{prometheus.address}")).start()
        s.prometheus = prometheus
        yield s
        s.stop()
    finally:
        prometheus.stop()


def service_with_stable(stack, name, **settings):
    """A service of its own (routed by Host), v1 stable, then progressive mode with `settings`."""
    stack.deploy(f"{name}-v1", "demo:v1", SERVICE_NAME=name, **{"proxy.host": f"{name}.test"})
    code, out, err = stack.gatekeeper_cli("wait", name, "--version", "v1", "--timeout", "120")
    assert code == 0, out + err + stack.logs()
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    code, out, err = stack.gatekeeper_cli("mode", name, "progressive", "--interval", str(INTERVAL), *args)
    assert code == 0, out + err
    return ManyClients("127.0.0.1", PORT, headers={"Host": f"{name}.test"}, threads=4).start()


def analysis_steps(stack, name):
    return [e for e in stack.stores.history.of(name) if e["event"] == "analysis"]


@pytest.fixture(scope="module")
def pgbad(stack):
    """v2 failing 5 % of requests under load, rolled back by the analysis: what the clients saw
    after it, for the test below, and the history it leaves, for the dashboard's."""
    load = service_with_stable(stack, "pgbad", step=10, threshold=3, min_requests=40)
    try:
        stack.deploy("pgbad-v2", "demo:v2", environment={"DEMO_ERROR_RATE": "5%"}, SERVICE_NAME="pgbad",
                     **{"proxy.host": "pgbad.test"})
        policy = stack.wait(lambda: (lambda p: p if p and p.aborted == "v2" else None)(stack.stores.policies.get("pgbad")[1]),
                            120, "the analysis to roll v2 back")
        rolled_back = time.monotonic()
        # the step's history entry follows the policy write by a moment
        steps = stack.wait(lambda: (lambda s: s if s and s[-1]["reason"].startswith("rolled back at ") else None)(
            analysis_steps(stack, "pgbad")), 10, "the rollback in the history")
        time.sleep(6)
        return {"policy": policy, "steps": steps, "after": load.since(rolled_back + 1.0),
                "errors_after": load.errors_since(rolled_back + 1.0)}
    finally:
        load.finish()


def test_a_version_failing_5_percent_of_requests_is_rolled_back_at_20_percent_at_most(stack, pgbad):
    policy, steps = pgbad["policy"], pgbad["steps"]
    assert policy.canary == "" and policy.weight == 0 and policy.stable == "v1"
    assert max(e["weight"] for e in steps) <= 20, steps
    last = steps[-1]
    assert last["result"] == "fail"
    assert "success rate" in last["reason"] and "< 99 %" in last["reason"]
    assert all("canary" in e and "requests" in e["canary"] for e in steps if e["result"] in ("pass", "fail"))
    aborted = [e for e in stack.stores.history.of("pgbad") if e["event"] == "aborted"]
    assert aborted and aborted[-1]["by"] == "gatekeeper (analysis)" and "rolled back at" in aborted[-1]["reason"]
    after = pgbad["after"]
    assert len(after) > 100 and pgbad["errors_after"] == []
    assert {a[2] for a in after} == {"v1"}
    # the operator's view says the same
    code, out, _ = stack.gatekeeper_cli("status", "pgbad")
    assert code == 0 and "rolled back at" in out
    ri = next(r for r in stack.stores.instances.of("pgbad") if r.instance.version == "v2")
    assert "rolled back at" in ri.gate_output


def test_the_dashboard_shows_the_rollout_the_failed_tests_and_follows_changes_live(stack, pgbad, tmp_path):
    """In a real browser (Debian's Chromium): log in with the operator's token, the overview shows
    pgbad with v1 stable; a broken v3 deployed meanwhile appears without a reload, its page shows
    its failed tests; the rollback's steps are on the chart. The viewer's token sees no action,
    and a forged action request is refused. Screenshots go to $PROXYSTACK_SCREENSHOTS (docs/images
    with `make screenshots`)."""
    from playwright.sync_api import expect
    shots = Path(os.environ.get("PROXYSTACK_SCREENSHOTS") or tmp_path)
    d = DashboardServer(stack.base, stack.consul.address, DASHBOARD, prometheus=f"http://{stack.prometheus.address}",
                        allow_actions=True).start()
    tokens = {part: open(stack.consul.token_file(part)).read().strip() for part in ("operator", "viewer")}
    try:
        with browser() as chromium:
            page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(d.url + "/")
            expect(page).to_have_url(d.url + "/login")
            page.fill("#token", tokens["operator"])
            page.click("button[type=submit]")
            row = page.locator('tr[data-service="pgbad"]')
            expect(row.locator(".stable")).to_have_text("v1")
            expect(row).to_contain_text("rolled back (v2 aborted)")
            expect(page.locator("body[data-live-ready]")).to_have_count(1)
            stack.deploy("pgbad-v3", "demo:v3", SERVICE_NAME="pgbad", **{"proxy.host": "pgbad.test"})
            expect(row).to_contain_text(re.compile(r"\b\d / 3\b"), timeout=30_000)   # live: v3 is registered
            page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)

            page.click('a[href="/services/pgbad"]')
            steps = analysis_steps(stack, "pgbad")
            chart = page.locator("svg.rollout-chart")
            expect(chart.locator("circle.step")).to_have_count(len(steps))
            expect(chart.locator("circle.result-fail")).to_have_count(sum(e["result"] == "fail" for e in steps))
            expect(chart.locator("text.outcome-label")).to_have_text("rolled back")
            expect(page.locator("#steps tbody tr")).to_have_count(len(steps) + 1)
            v3 = page.locator("tr.verdict-failed", has_text="pgbad-v3")
            expect(v3).to_have_count(1, timeout=120_000)                    # its tests ran and failed, live
            expect(page.locator("pre.test-output")).to_contain_text("failed")
            page.screenshot(path=str(shots / "dashboard-rollout.png"), full_page=True)
            expect(page.locator("#actions button")).to_have_count(4)
            # a page of another origin (another port: the same site, so the browser sends the
            # session cookie along) posts a rollback: refused, nothing changes
            with forging_page(d.url + "/services/pgbad/actions", {"action": "rollback"}) as forged:
                page.goto(forged)
                page.click("button")
                expect(page.locator("#problem")).to_contain_text(f"a request from {forged.rstrip('/')}")

            viewer = chromium.new_context().new_page()
            viewer.goto(d.url + "/login")
            viewer.fill("#token", tokens["viewer"])
            viewer.click("button[type=submit]")
            expect(viewer.locator('tr[data-service="pgbad"]')).to_have_count(1)
            viewer.goto(d.url + "/services/pgbad")
            expect(viewer.locator("svg.rollout-chart")).to_have_count(1)
            expect(viewer.locator("#actions")).to_have_count(0)
        policy = stack.stores.policies.get("pgbad")[1]
        assert (policy.stable, policy.previous, policy.canary) == ("v1", pgbad["policy"].previous, "")
    finally:
        d.stop()


def test_a_version_with_a_slow_p99_is_rolled_back_on_latency(stack):
    load = service_with_stable(stack, "pgslow", step=10, threshold=2, min_requests=5)
    try:
        stack.deploy("pgslow-v2", "demo:v2", environment={"DEMO_ADDED_LATENCY": "1.5s"}, SERVICE_NAME="pgslow",
                     **{"proxy.host": "pgslow.test"})
        stack.wait(lambda: (stack.stores.policies.get("pgslow")[1] or None) and stack.stores.policies.get("pgslow")[1].aborted == "v2",
                   120, "the analysis to roll the slow v2 back")
        last = stack.wait(lambda: (lambda s: s[-1] if s and s[-1]["reason"].startswith("rolled back at ") else None)(
            analysis_steps(stack, "pgslow")), 10, "the rollback in the history")
        assert "p99" in last["reason"] and "> 500 ms" in last["reason"] and last["canary"]["p99_ms"] > 1000
    finally:
        load.finish()


def test_a_good_version_walks_every_step_to_100_and_the_old_one_drains_without_a_failed_request(stack):
    load = service_with_stable(stack, "pggood", step=25, threshold=3, min_requests=20)
    try:
        stack.deploy("pggood-v2", "demo:v2", SERVICE_NAME="pggood", **{"proxy.host": "pggood.test"})
        stack.wait(lambda: (stack.stores.policies.get("pggood")[1] or None) and stack.stores.policies.get("pggood")[1].stable == "v2",
                   180, "the analysis to promote v2")
        steps = stack.wait(lambda: (lambda s: s if s and "promoted" in s[-1]["reason"] else None)(
            analysis_steps(stack, "pggood")), 10, "the promotion in the history")
        assert [e["weight"] for e in steps if e["result"] == "pass"] == [25, 50, 75, 100], steps
        promoted = [e for e in stack.stores.history.of("pggood") if e["event"] == "promoted"]
        assert promoted[-1]["by"] == "gatekeeper (analysis)"
        stack.wait(lambda: {a[2] for a in load.since(time.monotonic() - 1)} == {"v2"}, 30, "all traffic on v2")
        time.sleep(3)                                      # v1 drains (1 s) and is stopped
        assert [a for a in load.answers if a[1] != 200] == []
    finally:
        load.finish()


def test_without_traffic_the_analysis_holds_and_says_why_and_never_promotes(stack):
    """Progressive mode set by the new container's labels this time, not by the CLI."""
    stack.deploy("pgidle-v1", "demo:v1", SERVICE_NAME="pgidle", **{"proxy.host": "pgidle.test"})
    code, out, err = stack.gatekeeper_cli("wait", "pgidle", "--version", "v1", "--timeout", "120")
    assert code == 0, out + err
    stack.deploy("pgidle-v2", "demo:v2", SERVICE_NAME="pgidle", **{
        "proxy.host": "pgidle.test", "gatekeeper.mode": "progressive",
        "gatekeeper.analysis": f"step=50,interval={INTERVAL},min_requests=20"})
    stack.wait(lambda: len(analysis_steps(stack, "pgidle")) >= 3, 60, "three checks")
    steps = analysis_steps(stack, "pgidle")
    assert {e["result"] for e in steps} == {"hold"} and "too little traffic to judge" in steps[-1]["reason"]
    policy = stack.stores.policies.get("pgidle")[1]
    assert (policy.stable, policy.canary, policy.weight) == ("v1", "v2", 50)
    assert (policy.mode, policy.analysis.interval) == ("progressive", INTERVAL)
    assert [e["by"] for e in stack.stores.history.of("pgidle") if e["event"] == "mode"] == [
        "label on e2e-" + stack.session + "-pgidle-v2"]
    code, out, _ = stack.gatekeeper_cli("status", "pgidle")
    assert "too little traffic" in out


def test_prometheus_down_makes_a_step_inconclusive_and_the_analysis_resumes_after(stack):
    load = service_with_stable(stack, "pgprom", step=20, threshold=3, min_requests=20)
    try:
        stack.prometheus.stop()
        stack.deploy("pgprom-v2", "demo:v2", SERVICE_NAME="pgprom", **{"proxy.host": "pgprom.test"})
        stack.wait(lambda: len(analysis_steps(stack, "pgprom")) >= 2, 60, "two checks without Prometheus")
        steps = analysis_steps(stack, "pgprom")
        assert {e["result"] for e in steps} == {"inconclusive"}
        assert stack.stores.policies.get("pgprom")[1].weight == 20          # held, not passed
        stack.prometheus.start()
        stack.wait(lambda: any(e["result"] == "pass" for e in analysis_steps(stack, "pgprom")), 60,
                   "a passed check once Prometheus answers")
        assert stack.stores.policies.get("pgprom")[1].weight > 20 or stack.stores.policies.get("pgprom")[1].stable == "v2"
    finally:
        if stack.prometheus.proc.popen.poll() is not None:
            stack.prometheus.start()
        load.finish()


def test_a_new_leader_resumes_the_analysis_at_the_same_step(stack, consul_server):
    follower = Proc("gatekeeper-follower", python_module(
        "gatekeeper", "--consul", consul_server.address, "--consul-token-file", consul_server.token_file("gatekeeper"),
        "run", "--drain-seconds", "1", "--wait", "5", "--test-timeout", "60", "--id", "gatekeeper@follower",
        "--test-label", f"proxystack.test={stack.session}",
        "--prometheus", f"http://{stack.prometheus.address}"), stack.base)
    load = service_with_stable(stack, "pglead", step=20, threshold=3, min_requests=20, interval=6)
    follower.start()
    try:
        stack.deploy("pglead-v2", "demo:v2", SERVICE_NAME="pglead", **{"proxy.host": "pglead.test"})
        stack.wait(lambda: stack.stores.policies.get("pglead")[1].weight == 40, 60, "the first step passed (20 -> 40 %)")
        stack.wait(lambda: len(analysis_steps(stack, "pglead")) == 1, 10, "the 20 % check in the history")
        stack.gatekeeper.popen.send_signal(signal.SIGKILL)              # the leader dies mid-analysis
        stack.gatekeeper.popen.wait(10)
        killed = time.time()
        stack.wait(lambda: any(e["weight"] == 40 and e["result"] == "pass" for e in analysis_steps(stack, "pglead")),
                   90, "the follower to lead and judge the 40 % step")
        resumed = [e for e in analysis_steps(stack, "pglead") if e["time"] > killed]
        assert resumed[0]["weight"] == 40                              # same step, not started over
        assert not [e for e in stack.stores.history.of("pglead") if e["event"] == "analysis started"][1:]
    finally:
        load.finish()
        follower.stop()
        stack.gatekeeper.start()


def test_status_watch_refreshes_until_interrupted(stack):
    """`status --watch` redraws in place for people; with --json it prints one object per refresh."""
    import json
    import subprocess
    cmd = python_module("gatekeeper", "--consul", stack.consul.address, "--consul-token-file",
                        stack.consul.token_file("operator"), "status", "--watch", "0.3")
    for extra, check in ((["--json"], lambda out: ["services" in json.loads(line) for line in out.splitlines()]),
                         ([], lambda out: out.count("\x1b[H\x1b[2J"))):
        proc = subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        seen = check(out)
        assert (seen[:3] == [True] * 3) if extra else seen >= 3, out[-500:]
    code, _, err = stack.gatekeeper_cli("status", "--watch", "0")
    assert code == 2 and "--watch 0: expected seconds from 0.2 to 3600" in err
