"""The CD flow on real parts: build-and-push into a registry (Debian's docker-registry, TLS) on the
cluster's network, then deploy to prod: the cluster's host h2, whose dockerd speaks only TLS with
client certificates (scripts/cluster.sh), gated by the cluster's gatekeepers and served by its
proxies. The gate decides: a version whose integration tests fail makes `deploy` exit 1 and the
old version goes on serving. The ssh:// transport is tried against this machine's own engine."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import time

import docker
import pytest
import requests

from delivery.engine import _TlsClient
from tests.conftest import SESSION, TEST_LABEL
from testbed.cluster import CONSUL_CA, MACHINE_END, STATE as CLUSTER_STATE, host_ip, remove_demo_containers
from testbed.delivery import Registry, SshServer, certs
from testbed.load import LoadClient
from testbed.processes import ROOT
from testbed.stack import E2E_LABEL, Stack

pytestmark = pytest.mark.e2e

LISTEN_PORT, REGISTRY_PORT, SSH_PORT = 18004, 18900, 18222
PROD = "h2"
GOOD, BAD = f"g{SESSION}", f"b{SESSION}"


def delivery(*args, timeout=300, env=None):
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "delivery", *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    return res


@pytest.fixture(scope="module")
def cluster(namespace_cluster):
    """The shared cluster; what this module deployed on it goes at the end (test_cluster.py
    uses it next)."""
    yield namespace_cluster
    for h in namespace_cluster.hosts:
        remove_demo_containers(namespace_cluster, h)
    namespace_cluster.wait(lambda: not namespace_cluster.instances(), 60, "no demo instance registered")
    namespace_cluster.stores().forget_service("demo")


@pytest.fixture(scope="module")
def registry(tmp_path_factory, docker_client, cluster):
    """On the cluster's network (MACHINE_END, this machine's end of every host's link), with TLS."""
    r = Registry(tmp_path_factory.mktemp("registry"), REGISTRY_PORT, host=MACHINE_END,
                 ca_dir=CLUSTER_STATE / "certs").start()
    yield r
    r.stop()
    r.remove_local_tags(docker_client)


class Prod:
    """h2's engine as the CD node reaches it: tcp://ADDRESS:2376, TLS, a client certificate."""
    def __init__(self, cluster):
        self.cluster = cluster
        self.url = f"tcp://{host_ip(PROD)}:2376"
        self.client_dir = CLUSTER_STATE / "certs" / "client"
        self.docker = cluster.docker(PROD)

    def served_version(self):
        return self.cluster.get(PROD)[1].get("version")


@pytest.fixture(scope="module")
def engine_tls(cluster):
    return Prod(cluster)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = SshServer(tmp_path_factory.mktemp("ssh"), SSH_PORT).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    s = Stack(consul_server, tmp_path_factory.mktemp("cd"), docker_client, f"{SESSION}cd", LISTEN_PORT,
              service="demo").start()
    yield s
    s.stop()


def build_and_push(registry, version, *extra, source=ROOT / "demo_service"):
    return delivery("build-and-push", str(source), "--registry", registry.address, "--service", "demo",
                    "--version", version, "--wheelhouse", str(ROOT / ".stack" / "wheelhouse"), "--json", *extra)


def deploy(stack, registry, engine_tls, version, *extra):
    return delivery("deploy", f"{registry.address}/demo:{version}", "--engine", engine_tls.url,
                    "--tls-dir", str(engine_tls.client_dir), "--consul", engine_tls.cluster.consul_address(),
                    "--consul-token-file", str(CLUSTER_STATE / "tokens" / "operator.token"), "--timeout", "120",
                    "--label", "proxy.path=/demo/", "--label", "proxystack.demo=1", *extra,   # removed at the module's end
                    env={"CONSUL_CACERT": str(CONSUL_CA)})       # the cluster's Consul speaks HTTPS only


class TestDelivery:
    def test_1_build_and_push_tags_with_the_version_and_pushes_both_images(self, registry, docker_client):
        res = build_and_push(registry, GOOD)
        assert res.returncode == 0, res.stderr[-3000:]
        result = json.loads(res.stdout)
        assert result["image"] == f"{registry.address}/demo:{GOOD}"
        assert result["tests_image"] == f"{registry.address}/demo-test:{GOOD}"
        assert all(d.startswith("sha256:") for d in result["digests"].values()) and len(result["digests"]) == 2
        assert "its unit tests run in the build" in res.stderr
        assert GOOD in registry.tags("demo") and GOOD in registry.tags("demo-test")
        # the pull in deploy must come from the registry, not from this engine's cache
        for tag in (result["image"], result["tests_image"]):
            docker_client.images.remove(tag)

    def test_2_a_failing_unit_test_fails_the_build_and_nothing_is_pushed(self, registry, tmp_path):
        source = tmp_path / "demo_service"
        shutil.copytree(ROOT / "demo_service", source, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        (source / "tests" / "test_regression.py").write_text(
            "def test_recommendation_is_stable():\n    assert 7671 == 7672, 'recommendation changed'\n")
        res = build_and_push(registry, f"u{SESSION}", source=source)
        assert res.returncode == 1, res.stderr[-3000:]
        assert "test_recommendation_is_stable" in res.stderr and "building" in res.stderr
        assert json.loads(res.stdout)["ok"] is False
        assert f"u{SESSION}" not in registry.tags("demo") and f"u{SESSION}" not in registry.tags("demo-test")

    def test_3_deploy_over_tls_pulls_runs_and_waits_for_the_gate(self, stack, registry, engine_tls, docker_client):
        res = deploy(stack, registry, engine_tls, GOOD, "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads(res.stdout)["container"] == f"demo-{GOOD}"
        assert f"pulling {registry.address}/demo:{GOOD}" in res.stderr
        assert f"demo {GOOD}: admitted and stable" in res.stderr
        container = engine_tls.docker.containers.get(f"demo-{GOOD}")     # on prod, removed at the module's end
        assert container.labels["gatekeeper.tests"] == f"{registry.address}/demo-test:{GOOD}"
        for h in engine_tls.cluster.hosts:                  # exit 0: every proxy serves it already
            assert engine_tls.cluster.get(h)[1].get("version") == GOOD, h

    def test_4_a_version_that_fails_the_gate_exits_1_and_the_old_one_serves_on(self, stack, registry, engine_tls, docker_client):
        res = build_and_push(registry, BAD, "--build-arg", "BROKEN=1")
        assert res.returncode == 0, "the broken version passes its unit tests: " + res.stderr[-3000:]
        load = LoadClient(host_ip(PROD), 8000, max_seconds=150)
        load.start()
        res = deploy(stack, registry, engine_tls, BAD)
        time.sleep(0.5)
        load.finish()
        assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
        assert f"demo {BAD}: tests failed" in res.stdout and f"demo still serves {GOOD}" in res.stdout
        with pytest.raises(docker.errors.NotFound):
            engine_tls.docker.containers.get(f"demo-{BAD}")
        assert load.failures == [] and set(load.versions) == {GOOD}, (load.failures[:5], load.versions)
        assert engine_tls.served_version() == GOOD

    def test_5_the_engine_refuses_clients_without_a_valid_certificate(self, engine_tls, tmp_path):
        url = engine_tls.url.replace("tcp://", "https://")
        ca = str(engine_tls.client_dir / "ca.pem")

        def client(tls):                    # verifies against the engine's CA, not REQUESTS_CA_BUNDLE
            return _TlsClient(base_url=url, tls=tls, timeout=10)

        ok = client(docker.tls.TLSConfig(
            client_cert=(str(engine_tls.client_dir / "cert.pem"), str(engine_tls.client_dir / "key.pem")), ca_cert=ca, verify=True))
        assert ok.ping() is True
        refused = (requests.exceptions.SSLError, requests.exceptions.ConnectionError, docker.errors.DockerException)
        with pytest.raises(refused):
            client(docker.tls.TLSConfig(ca_cert=ca, verify=True)).ping()          # no client certificate
        # a certificate from another CA, however well-formed, is not one the engine trusts
        certs("ca", str(tmp_path / "other-ca"))
        certs("client", str(tmp_path / "other-ca"), str(tmp_path / "intruder"), "intruder")
        with pytest.raises(refused):
            client(docker.tls.TLSConfig(client_cert=(str(tmp_path / "intruder" / "cert.pem"),
                                                     str(tmp_path / "intruder" / "key.pem")), ca_cert=ca, verify=True)).ping()
        # plain HTTP on the TLS port gets no API answer
        plain = subprocess.run(["docker", "-H", engine_tls.url, "version", "-f", "{{.Server.Version}}"],
                               capture_output=True, text=True, timeout=30, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)})
        assert plain.returncode != 0 and not plain.stdout.strip()

    def test_6_deploy_refuses_an_engine_on_tcp_without_tls(self, stack):
        res = delivery("deploy", "127.0.0.1:18900/demo:v1", "--engine", "tcp://127.0.0.1:2375",
                       "--consul", stack.consul.address, "--consul-token-file", stack.consul.token_file("operator"))
        assert res.returncode == 2
        assert "refusing an engine on TCP without TLS" in res.stderr and "--tls-dir" in res.stderr

    def test_7_deploy_reaches_an_engine_over_ssh_and_only_with_an_authorized_key(self, stack, registry, sshd, docker_client):
        common = ["--consul", stack.consul.address, "--consul-token-file", stack.consul.token_file("operator"),
                  "--timeout", "60", "--label", f"{E2E_LABEL}={stack.session}", "--label", f"{TEST_LABEL}={stack.session}",
                  "--label", "proxy.path=/demo/"]
        engine = f"ssh://{getpass.getuser()}@127.0.0.1:{SSH_PORT}"
        # this machine's own engine, with the stack's Consul, gatekeeper and proxy
        res = delivery("deploy", f"{registry.address}/demo:{GOOD}", "--engine", engine, *common,
                       env=sshd.client_env("client"))
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        stack.containers["ssh"] = docker_client.containers.get(f"demo-{GOOD}")     # removed with the stack
        assert f"demo {GOOD}: admitted and stable" in res.stdout and stack.served_version() == GOOD
        res = delivery("deploy", f"{registry.address}/demo:{GOOD}", "--engine", engine, *common,
                       env=sshd.client_env("client"))
        assert res.returncode == 0 and f"demo-{GOOD} already runs" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
        res = delivery("deploy", f"{registry.address}/demo:{GOOD}", "--engine", engine, *common,
                       env=sshd.client_env("stranger"))
        assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-2000:]
        assert "cannot reach the Docker Engine at ssh://" in res.stderr

    def test_8_a_taken_container_name_is_bad_input_and_changes_nothing(self, stack, registry, engine_tls):
        running = engine_tls.docker.containers.get(f"demo-{GOOD}")
        res = deploy(stack, registry, engine_tls, BAD, "--name", f"demo-{GOOD}")
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
        assert f"a container named demo-{GOOD} already exists" in res.stderr
        running.reload()
        assert running.status == "running" and running.id == engine_tls.docker.containers.get(f"demo-{GOOD}").id
        assert engine_tls.served_version() == GOOD
