"""compose/: the stack as containers under Docker Compose v2, end to end on the real engine.

`up -d` starts Consul (ACLs on), the one-shot ACL set-up, registrator, gatekeeper, the proxy,
and Prometheus with its targets watcher; a demo container started with `docker run` and labels
only is tested and then served through the proxy, and Prometheus scrapes every daemon; `down -v`
leaves no container, volume or network of the project behind.
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.conftest import SESSION, TEST_LABEL
from testbed.processes import ROOT, wait_until

pytestmark = pytest.mark.e2e

PROJECT = f"pst{SESSION}"
COMPOSE = [str(ROOT / ".venv" / "bin" / "docker-compose"), "-p", PROJECT, "-f", str(ROOT / "compose" / "docker-compose.yml")]
PROXY, ADMIN, CONSUL, PROXY_TLS = 18760, 18761, 18750, 18763
PROMETHEUS, REGISTRATOR_METRICS, GATEKEEPER_METRICS, DASHBOARD = 18754, 18755, 18756, 18757
ENV = {
    "CONSUL_HTTP_PORT": str(CONSUL), "CONSUL_SERVER_PORT": "18751", "CONSUL_SERF_LAN_PORT": "18752",
    "CONSUL_SERF_WAN_PORT": "18753", "PROXY_LISTEN": f"127.0.0.1:{PROXY}",
    "PROXY_TLS_LISTEN": f"127.0.0.1:{PROXY_TLS}", "PROXY_ADMIN": f"127.0.0.1:{ADMIN}",
    "PROMETHEUS_LISTEN": f"127.0.0.1:{PROMETHEUS}", "REGISTRATOR_METRICS": f"127.0.0.1:{REGISTRATOR_METRICS}",
    "GATEKEEPER_METRICS": f"127.0.0.1:{GATEKEEPER_METRICS}", "DASHBOARD_LISTEN": f"127.0.0.1:{DASHBOARD}",
    # Only this session's containers, and test containers that the session's cleanup finds.
    "REGISTRATOR_FLAGS": f"--explicit --filter-label proxystack.compose={SESSION}",
    "GATEKEEPER_FLAGS": f"--test-label {TEST_LABEL}={SESSION} --drain-seconds 2",
}


def compose(*args, timeout=240):
    env = {**os.environ, **ENV}
    env.pop("DOCKER_HOST", None)
    return subprocess.run([*COMPOSE, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def https_get(context, path):
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{PROXY_TLS}{path}", timeout=5, context=context) as r:
            return r.status, r.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def leftovers(client):
    label = {"label": f"com.docker.compose.project={PROJECT}"}
    return {"containers": [c.name for c in client.containers.list(all=True, filters=label)],
            "volumes": [v.name for v in client.volumes.list(filters=label)],
            "networks": [n.name for n in client.networks.list(filters=label)]}


@pytest.fixture(scope="module")
def project(docker_client, demo_images):
    up = compose("up", "-d")
    try:
        assert up.returncode == 0, f"docker-compose up failed:\n{up.stderr[-3000:]}"
        yield
    finally:
        compose("down", "-v", "--remove-orphans")


class TestComposeStack:
    def test_1_up_starts_every_part_and_acl_setup_finishes(self, project, docker_client):
        states = {c.labels["com.docker.compose.service"]: c.status
                  for c in docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})}
        assert set(states) == {"consul", "acl-setup", "registrator", "gatekeeper", "proxy", "prometheus-targets",
                               "prometheus", "dashboard"}, states
        assert states["acl-setup"] == "exited"
        assert {states[s] for s in set(states) - {"acl-setup"}} == {"running"}
        exit_code = docker_client.containers.get(f"{PROJECT}-acl-setup-1").attrs["State"]["ExitCode"]
        assert exit_code == 0
        # ACLs are on: without a token Consul lists no services, not even consul itself
        status, body = get(CONSUL, "/v1/catalog/services")
        assert status == 200 and json.loads(body) == {}
        # each part sees its own token and no other (not the bootstrap token, not the operator's)
        for part in ("registrator", "gatekeeper", "proxy", "prometheus-targets"):
            c = docker_client.containers.get(f"{PROJECT}-{part}-1")
            code, out = c.exec_run(["sh", "-c", "ls /run/token; ls /tokens 2>&1 || true"])
            assert out.decode().split("\n")[0] == "token" and "bootstrap" not in out.decode(), (part, out)
        operator = compose(*"run --rm --no-deps --entrypoint cat acl-setup /tokens/operator.token".split())
        assert operator.returncode == 0 and len(operator.stdout.strip()) == 36, operator.stderr[-1000:]
        wait_until(lambda: get(ADMIN, "/status")[0] == 200, 30, "the proxy's status endpoint")
        # the dashboard: the viewer's token logs in, read-only
        viewer = compose(*"run --rm --no-deps --entrypoint cat acl-setup /tokens/viewer.token".split()).stdout.strip()
        wait_until(lambda: get(DASHBOARD, "/healthz")[0] == 200, 30, "the dashboard")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"http://127.0.0.1:{DASHBOARD}/login", data=f"token={viewer}".encode(), timeout=10) as r:
            assert "(read-only)" in r.read().decode() and r.url.endswith("/")

    def test_2_a_docker_run_container_is_tested_then_served(self, project, run_container):
        c = run_container("demo:v1", labels={"SERVICE_NAME": "demo", "gatekeeper.tests": "demo-test:latest",
                                             "proxystack.compose": SESSION})
        wait_until(lambda: get(PROXY, "/demo/1")[0] == 200, 90, "the compose proxy to serve demo v1")
        status, body = get(PROXY, "/demo/1")
        assert json.loads(body) == {"id": 1, "rec": 7671, "version": "v1"}
        # over HTTPS too, with a certificate of the stack's own CA, which this client trusts alone
        root = compose("exec", "-T", "proxy", "cat", "/var/lib/proxystack/ca/root.crt")
        assert root.returncode == 0 and "BEGIN CERTIFICATE" in root.stdout, root.stderr[-1000:]
        tls = ssl.create_default_context(cadata=root.stdout)
        wait_until(lambda: https_get(tls, "/demo/1")[0] == 200, 30, "the compose proxy to serve demo over HTTPS")
        assert json.loads(https_get(tls, "/demo/1")[1])["version"] == "v1"
        logs = compose("logs", "--no-color", "gatekeeper").stdout
        assert "demo v1 with demo-test:latest" in logs and "passed" in logs, logs[-2000:]
        c.remove(force=True)
        wait_until(lambda: get(PROXY, "/demo/1")[0] in (404, 503), 30, "the removed instance to leave the proxy")

    def test_3_prometheus_finds_and_scrapes_every_daemon(self, project):
        def targets():
            status, body = get(PROMETHEUS, "/api/v1/targets")
            found = {t["labels"]["job"]: t["health"] for t in json.loads(body)["data"]["activeTargets"]} \
                if status == 200 else {}
            # Prometheus's own target too: it may be scraped a moment after the others
            jobs = ("registrator", "gatekeeper", "proxy-reloader", "prometheus")
            return found if {found.get(j) for j in jobs} == {"up"} else None
        wait_until(targets, 90, "Prometheus to scrape registrator, gatekeeper, proxy-reloader and itself")
        status, body = get(PROMETHEUS, "/api/v1/query?query=sum(gatekeeper_test_runs_total)")
        assert status == 200 and float(json.loads(body)["data"]["result"][0]["value"][1]) >= 1

    def test_4_down_leaves_nothing_behind(self, project, docker_client):
        assert any(leftovers(docker_client).values())
        down = compose("down", "-v", "--remove-orphans")
        assert down.returncode == 0, down.stderr[-2000:]
        assert leftovers(docker_client) == {"containers": [], "volumes": [], "networks": []}
        assert docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={SESSION}",
                                                                "ancestor": "demo-test:latest"}) == []
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{PROXY}/", timeout=2)
