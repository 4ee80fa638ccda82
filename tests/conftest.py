"""Fixtures that start the real components. Every container a test starts carries the label
proxystack.test=<session id>, and only those are removed afterwards."""
from __future__ import annotations

import os
import uuid

import docker
import docker.errors
import pytest

from catalog.stores import Stores
from testbed.processes import ConsulServer

SESSION = uuid.uuid4().hex[:10]
TEST_LABEL = "proxystack.test"
DEMO_IMAGES = ("demo:v1", "demo:v2", "demo:v3", "demo-test:latest")


SHARED_CLUSTER = "namespace_cluster"
_cluster_up = {}


def uses_cluster(item) -> bool:
    return SHARED_CLUSTER in getattr(item, "fixturenames", ())


# `make test` runs the suite as two pytest processes side by side, one side each
# (PROXYSTACK_TEST_SIDE=a or b), each with a Consul of its own, both on this machine's Docker
# Engine; the tests that restart the engine run afterwards, alone (scripts/test.sh). Side "b" holds
# what may not run beside itself and is long enough to balance the rest: the modules that turn on
# swarm mode or use the demo's own ports (tests/deploy/, test_swarm), those of the namespace
# cluster and the 20-agent fleet, and two that share ports (test_progressive's proxy and pebble
# in test_acme), and test_backup (a stack and two Consuls of its own) to even the two sides'
# times. Every other module is side "a". Each module's ports are its own (docs/development.md
# lists them), so the two sides never meet.
SIDE_B = ("tests/deploy/", "tests/e2e/test_swarm.py", "tests/e2e/test_cluster.py", "tests/e2e/test_swarm_cluster.py",
          "tests/e2e/test_fleet.py",
          "tests/e2e/test_progressive.py", "tests/e2e/test_acme.py", "tests/e2e/test_backup.py")


# Whole hosts in containers on a network of their own (no port of this machine's): side a, which
# is the shorter one.
SIDE_A_ALSO = ("tests/deploy/test_ansible_cluster.py",)


def side(item) -> str:
    path = item.nodeid.split("::")[0]
    return "b" if path.startswith(SIDE_B) and not path.startswith(SIDE_A_ALSO) else "a"


def pytest_collection_modifyitems(config, items):
    """Tests that restart the Docker Engine run last: it stops every container. Just before
    them, the test modules that share the namespace cluster (each whole, in its own order, so
    that a module's fixtures are set up once), one after the other, so that the cluster is up
    only while they run. With PROXYSTACK_TEST_SIDE, only that side's tests run."""
    cluster_modules = {item.module for item in items if uses_cluster(item)}
    items.sort(key=lambda item: (item.get_closest_marker("engine_restart") is not None,
                                 item.module in cluster_modules))
    chosen = os.environ.get("PROXYSTACK_TEST_SIDE")
    if chosen:
        config.hook.pytest_deselected(items=[item for item in items if side(item) != chosen])
        items[:] = [item for item in items if side(item) == chosen]


def _cluster_ahead(item) -> bool:
    """Whether `item` or any test after it needs the cluster (a test of a cluster module that
    does not use it may sit between two that do)."""
    items = item.session.items
    return any(uses_cluster(other) for other in items[items.index(item):])


def _cluster_down() -> None:
    cluster = _cluster_up.pop("cluster", None)
    if cluster is not None:
        cluster.down()


@pytest.fixture(scope="session")
def namespace_cluster():
    """Three hosts and a Consul cluster (scripts/cluster.sh), brought up once for every module
    that needs one and taken down after the last of them. Each module leaves it as it found it:
    no container, policy or history of its own left behind."""
    from testbed.cluster import Cluster
    cluster = Cluster(3)
    _cluster_up["cluster"] = cluster
    try:
        yield cluster.up()
    finally:
        _cluster_down()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test that used the shared cluster (and its modules' fixtures), it goes."""
    yield
    if uses_cluster(item) and (nextitem is None or not _cluster_ahead(nextitem)):
        _cluster_down()


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker Engine reachable ({exc}); `make test` installs and starts one")
    yield client
    for c in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={SESSION}"}, ignore_removed=True):
        try:
            c.remove(force=True)
        except docker.errors.APIError:
            pass


@pytest.fixture(scope="session")
def demo_images(docker_client):
    missing = []
    for tag in DEMO_IMAGES:
        try:
            docker_client.images.get(tag)
        except docker.errors.ImageNotFound:
            missing.append(tag)
    if missing:
        pytest.fail(f"images {', '.join(missing)} are missing; `bash scripts/install.sh images` builds them")
    return DEMO_IMAGES


@pytest.fixture(scope="session")
def consul_server(tmp_path_factory):
    # PROXYSTACK_TEST_CONSUL_PORT moves the unit tests' Consul (HTTP on it, server ports from it
    # minus 200), so a second checkout can run its unit tests beside a running suite.
    http = int(os.environ.get("PROXYSTACK_TEST_CONSUL_PORT", "18500"))
    server = ConsulServer(tmp_path_factory.mktemp("consul"), http_port=http, port_base=http - 200).start()
    yield server
    server.stop()


@pytest.fixture
def stores(consul_server) -> Stores:
    return Stores.connect(consul_server.address, token=consul_server.management_token, timeout=5, max_wait=5)


@pytest.fixture
def run_container(docker_client):
    """Start a labelled container; everything started is removed at the end of the test."""
    started = []

    def run(image: str, labels: dict = None, name: str = None, **kwargs):
        name = name or f"pst-{SESSION}-{uuid.uuid4().hex[:6]}"
        c = docker_client.containers.run(image, detach=True, name=name, publish_all_ports=True,
                                         labels={TEST_LABEL: SESSION, **(labels or {})}, **kwargs)
        started.append(c)
        c.reload()
        return c

    yield run
    for c in started:
        try:
            c.remove(force=True)
        except docker.errors.APIError:
            pass


def host_port(container, port: str = "8080/tcp") -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][port][0]["HostPort"])


@pytest.fixture
def unique():
    return f"t{uuid.uuid4().hex[:8]}"
