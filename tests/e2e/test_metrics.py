"""Metrics on the real stack: Prometheus (Debian's, with the stack's configuration) finds every
daemon through Consul with its own read-only token, scrapes them all, and sees each version's
requests, success ratio and latency through the proxy; no endpoint shows a secret."""
from __future__ import annotations

import time
import urllib.request

import pytest

from tests.conftest import SESSION
from testbed.processes import PrometheusServer
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT, REGISTRATOR_METRICS, GATEKEEPER_METRICS, PROMETHEUS = 18010, 18011, 18012, 18013
COMPONENTS = {"registrator", "gatekeeper", "proxy-reloader"}


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics")
    s = Stack(consul_server, base, docker_client, f"{SESSION}mx", PORT, drain_seconds=1, service="mxdemo",
              metrics_ports=(REGISTRATOR_METRICS, GATEKEEPER_METRICS)).start()
    try:
        prometheus = PrometheusServer(base, consul_server, PROMETHEUS).start()
    except BaseException:
        s.stop()
        raise
    s.prometheus = prometheus
    yield s
    prometheus.stop()
    s.stop()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = line[len(name):].split("}")[0].lstrip("{")
            if all(f'{k}="{v}"' in found for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_daemon_is_found_through_consul_scraped_and_shows_its_work(stack, consul_server):
    stack.deploy("v1", "demo:v1")
    stack.wait(lambda: stack.served_version() == "v1", 120, "v1 served")

    def all_up():
        targets = stack.prometheus.api("targets")["activeTargets"]
        mine = {t["labels"]["job"]: t for t in targets if t["labels"].get("job") in COMPONENTS
                and t["scrapeUrl"].split("/")[2].split(":")[1] in
                {str(REGISTRATOR_METRICS), str(GATEKEEPER_METRICS), str(PORT + 1000)}}
        return mine if set(mine) == COMPONENTS and all(t["health"] == "up" for t in mine.values()) else None
    targets = stack.wait(all_up, 60, "Prometheus to find and scrape registrator, gatekeeper and proxy-reloader")

    secrets = [open(consul_server.token_file(p)).read().strip()
               for p in ("bootstrap", "registrator", "gatekeeper", "proxy-reloader", "operator", "prometheus")]
    bodies = {job: scrape(t["scrapeUrl"]) for job, t in targets.items()}
    for job, text in bodies.items():
        leaked = [s[:8] for s in secrets if s in text]
        assert not leaked and "secret" not in text.lower(), f"{job}'s metrics name a secret"
    assert sample(bodies["registrator"], "registrator_registrations_total") >= 1
    assert sample(bodies["registrator"], "registrator_docker_events_total", action="start") >= 1
    assert sample(bodies["gatekeeper"], "gatekeeper_test_runs_total", service="mxdemo", result="passed") >= 1
    assert sample(bodies["gatekeeper"], "gatekeeper_gate_open_seconds_count", service="mxdemo") >= 1
    assert sample(bodies["gatekeeper"], "gatekeeper_promotions_total", service="mxdemo", event="promoted") >= 1
    assert sample(bodies["gatekeeper"], "gatekeeper_leader") == 1
    assert sample(bodies["proxy-reloader"], "proxy_reloader_applied_total", way="push", result="ok") >= 1
    assert sample(bodies["proxy-reloader"], "proxystack_nginx_metrics_up") == 1


FLUSH_SECONDS = 1        # proxy_reloader/lua/proxystack/metrics.lua


def proxy_5xx() -> float:
    """v2's 5xx as the proxy itself counts them, read from its /metrics (what Prometheus scrapes)."""
    return sample(scrape(f"http://127.0.0.1:{PORT + 1000}/metrics"), "proxystack_requests_total",
                  service="mxdemo", version="v2", status="5xx")


def test_prometheus_sees_each_versions_requests_errors_and_latency(stack):
    """v2 fails a fifth of proxied requests and adds 100 ms (it still passes its tests, which
    call the container directly): Prometheus's rules show both, per version."""
    stack.deploy("v2", "demo:v2", environment={"DEMO_ERROR_RATE": "20%", "DEMO_ADDED_LATENCY": "100ms"})
    stack.wait(lambda: stack.served_version() == "v2" or None, 120, "v2 served")
    # the polls above may have met v2's errors too: the proxy's own count before ours is the baseline
    # (nginx's workers add their counts to the shared dict once a second)
    time.sleep(FLUSH_SECONDS + 0.5)
    before = proxy_5xx()
    statuses = [stack.get("/demo/7")[0] for _ in range(200)]
    assert 10 <= statuses.count(500) <= 80 and set(statuses) <= {200, 500}
    expected = before + statuses.count(500)
    stack.wait(lambda: proxy_5xx() == expected, 10, f"the proxy to count the {statuses.count(500)} 500s it answered")
    query = stack.prometheus.query
    seen = {}

    def counted():
        five = query('proxystack_requests_total{service="mxdemo",version="v2",status="5xx"}')
        seen["5xx"] = {str(dict(k)): v for k, v in five.items()}
        seen["up"] = {dict(k).get("job", "?"): v for k, v in query("up").items()}
        return sum(five.values()) == expected
    try:
        stack.wait(counted, 60, "Prometheus to scrape every 5xx of v2")
    except AssertionError as exc:        # say what Prometheus had: a count off, or scrapes failing
        raise AssertionError(f"{statuses.count(500)} answered 500 after {before:.0f} earlier; "
                             f"Prometheus has {seen}\n{exc}") from None
    ratio = query('proxystack:success_ratio:rate30s{service="mxdemo",version="v2"}')
    assert ratio and 0.5 < list(ratio.values())[0] < 0.97
    p99 = stack.wait(lambda: query('proxystack:latency_p99_seconds:30s{service="mxdemo",version="v2"}'), 30,
                     "the p99 rule")
    assert 0.1 <= list(p99.values())[0] <= 1.0
