"""delivery deploy's decisions with a fake engine: what it pulls and runs, when a container of the
same name is reused or refused, what is removed when the gate says no, and the exit code a CD job
gets. (Real-engine twin: tests/deploy/.)"""
from types import SimpleNamespace

import docker
import pytest

from catalog.model import RoutingPolicy
from catalog.validation import InvalidValue
from delivery import deploy as deploy_mod
from delivery.deploy import (WAIT_FAILED, WAIT_OK, WAIT_TIMEOUT, DeployError, Deployment, NameTaken, deploy,
                             serving)


class FakeContainer:
    def __init__(self, name, image, status="running", ports=None, labels=None):
        self.name, self.image, self.status, self.labels = name, image, status, labels or {}
        self.short_id = "c0ffee123456"
        self.attrs = {"NetworkSettings": {"Ports": ports}}
        self.reloaded = False
        self.removed = None

    def reload(self):
        self.reloaded = True

    def remove(self, **kw):
        self.removed = kw


class FakeImages:
    def __init__(self, engine):
        self.engine = engine

    def pull(self, repo, tag=None):
        self.engine.pulls.append((repo, tag))
        ref = f"{repo}:{tag}"
        if ref in self.engine.unpullable:
            raise self.engine.unpullable[ref]
        return SimpleNamespace(id=f"sha256:{ref}", tags=[ref], short_id=f"sha256:{ref[:6]}")


class FakeContainers:
    def __init__(self, engine):
        self.engine = engine

    def get(self, name):
        if name not in self.engine.existing:
            raise docker.errors.NotFound(f"No such container: {name}")
        return self.engine.existing[name]

    def run(self, image, **kw):
        self.engine.runs.append((image, kw))
        c = FakeContainer(kw.get("name"), SimpleNamespace(id=f"sha256:{image}"), ports=self.engine.ports)
        self.engine.started.append(c)
        return c


class FakeEngine:
    """The slice of docker.DockerClient deploy uses: images.pull, containers.get/run."""

    def __init__(self, ports=None):
        self.pulls, self.runs, self.started = [], [], []
        self.existing, self.unpullable = {}, {}
        self.ports = ports
        self.images, self.containers = FakeImages(self), FakeContainers(self)


class FakePolicies:
    """PolicyStore.get: (index, policy) of the service asked about; `error` as a bad record raises."""

    def __init__(self, policy=None, error=None):
        self.policy, self.error = policy, error

    def get(self, service):
        if self.error:
            raise self.error
        return 7, self.policy if self.policy and self.policy.service == service else None


@pytest.fixture
def gate(monkeypatch):
    """gatekeeper's verdict, as wait_for_version returns it; records how it was asked."""
    g = SimpleNamespace(outcome=WAIT_OK, calls=[])

    def wait_for_version(stores, service, version, timeout, say=None):
        g.calls.append((stores, service, version, timeout, say))
        return g.outcome
    monkeypatch.setattr(deploy_mod, "wait_for_version", wait_for_version)
    return g


def stores(policy=None, error=None):
    return SimpleNamespace(policies=FakePolicies(policy, error))


D = Deployment.of("demo", "reg:5000/demo:v2")


# --- Deployment.of -------------------------------------------------------------------------

def test_a_deployment_keeps_what_it_was_given():
    d = Deployment.of("demo", "reg:5000/demo:v2", tests_image="reg:5000/checks:7", version="v2b", name="demo-blue",
                      timeout=12.5, keep_failed=True, labels={"team": "recs"})
    assert (d.service, d.version, d.image, d.tests_image, d.name) == (
        "demo", "v2b", "reg:5000/demo:v2", "reg:5000/checks:7", "demo-blue")
    assert (d.timeout, d.keep_failed, d.labels) == (12.5, True, {"team": "recs"})


def test_by_default_it_waits_five_minutes_and_removes_a_failed_version():
    assert (D.timeout, D.keep_failed, D.labels) == (300.0, False, {})


def test_an_untagged_image_deploys_as_latest():
    d = Deployment.of("demo", "reg:5000/demo")
    assert (d.version, d.tests_image, d.name) == ("latest", "reg:5000/demo-test:latest", "demo-latest")


@pytest.mark.parametrize("kw, field", [({"tests_image": "reg/demo-test:v1;rm -rf /"}, "image"),
                                       ({"name": "demo v1"}, "container_name"),
                                       ({"name": "../demo"}, "container_name")])
def test_a_bad_test_image_or_container_name_is_refused_and_named(kw, field):
    with pytest.raises(InvalidValue) as err:
        Deployment.of("demo", "reg/demo:v1", **kw)
    assert err.value.field == field


# --- pulling -------------------------------------------------------------------------------

def test_both_images_are_pulled_by_repository_and_tag_before_the_container_runs(gate):
    engine, said = FakeEngine(), []
    deploy(engine, stores(), D, say=said.append)
    assert engine.pulls == [("reg:5000/demo", "v2"), ("reg:5000/demo-test", "v2")]
    assert said[:2] == ["pulling reg:5000/demo:v2", "pulling reg:5000/demo-test:v2"]


def test_an_image_without_a_tag_is_pulled_as_latest():
    engine = FakeEngine()
    deploy_mod.pull(engine, "reg:5000/demo", lambda _: None)
    assert engine.pulls == [("reg:5000/demo", "latest")]


@pytest.mark.parametrize("error, shown", [
    (docker.errors.APIError("500 Server Error", explanation="manifest unknown"), "manifest unknown"),
    (docker.errors.APIError("connection refused"), "connection refused")])  # no explanation: the error itself
def test_an_image_the_engine_cannot_pull_stops_the_deploy_before_anything_runs(gate, error, shown):
    engine = FakeEngine()
    engine.unpullable["reg:5000/demo-test:v2"] = error
    with pytest.raises(DeployError) as err:
        deploy(engine, stores(), D, say=lambda _: None)
    assert str(err.value) == (f"the engine could not pull reg:5000/demo-test:v2: {shown}; was it pushed "
                              "(build-and-push), and can the engine reach that registry?")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert err.value.exit_code == 3
    assert engine.runs == [] and gate.calls == []


# --- running -------------------------------------------------------------------------------

def test_the_container_runs_detached_with_the_gate_labels_published_ports_and_a_restart_policy(gate):
    engine = FakeEngine()
    d = Deployment.of("demo", "reg:5000/demo:v2", labels={"team": "recs"})
    deploy(engine, stores(), d, say=lambda _: None)
    [(image, kw)] = engine.runs
    assert image == "reg:5000/demo:v2"
    assert kw == {"name": "demo-v2", "detach": True, "publish_all_ports": True,
                  "labels": {"team": "recs", "SERVICE_NAME": "demo", "gatekeeper.tests": "reg:5000/demo-test:v2",
                             "gatekeeper.version": "v2"},
                  "restart_policy": {"Name": "unless-stopped"}}


def test_the_start_message_names_the_published_ports_read_after_the_start(gate):
    engine, said = FakeEngine(ports={"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}],
                                     "9090/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32769"}],
                                     "7000/udp": None}), []
    deploy(engine, stores(), D, say=said.append)
    assert engine.started[0].reloaded, "ports are known only after a reload of the container's attrs"
    assert said[2] == ("started demo-v2 (c0ffee123456): 8080/tcp -> 0.0.0.0:32768, "
                       "9090/tcp -> 127.0.0.1:32769")


@pytest.mark.parametrize("ports", [None, {}, {"8080/tcp": None}, {"8080/tcp": []}])
def test_a_container_without_published_ports_says_just_started(gate, ports):
    said = []
    deploy(FakeEngine(ports=ports), stores(), D, say=said.append)
    assert said[2] == "started demo-v2 (c0ffee123456)"


def test_the_same_version_already_running_is_waited_for_not_started_again(gate):
    engine, said = FakeEngine(), []
    running = FakeContainer("demo-v2", SimpleNamespace(id="sha256:reg:5000/demo:v2"), status="running")
    engine.existing["demo-v2"] = running
    gate.outcome = WAIT_FAILED
    assert deploy(engine, stores(), D, say=said.append) == WAIT_FAILED
    assert engine.runs == []
    assert "demo-v2 already runs reg:5000/demo:v2; waiting for its verdict" in said
    assert running.removed == {"force": True}, "the container waited for is the one removed"


@pytest.mark.parametrize("image_id, status", [("sha256:reg:5000/demo:v2", "exited"),
                                              ("sha256:other", "running"),
                                              ("sha256:other", "exited")])
def test_another_container_with_the_name_is_refused_and_left_alone(gate, image_id, status):
    engine = FakeEngine()
    other = FakeContainer("demo-v2", SimpleNamespace(id=image_id, tags=["reg:5000/demo:v1"], short_id="sha256:ab12"),
                          status=status)
    engine.existing["demo-v2"] = other
    with pytest.raises(NameTaken) as err:
        deploy(engine, stores(), D, say=lambda _: None)
    message = str(err.value)
    assert message.startswith(f"a container named demo-v2 already exists ({status}, image ")
    assert "reg:5000/demo:v1" in message and message.endswith("); remove it or give --name")
    assert err.value.exit_code == 2
    assert engine.runs == [] and other.removed is None and gate.calls == []


def test_a_name_clash_with_an_untagged_image_names_the_image_id(gate):
    engine = FakeEngine()
    engine.existing["demo-v2"] = FakeContainer("demo-v2", SimpleNamespace(id="sha256:x", tags=[], short_id="sha256:ab12"),
                                               status="created")
    with pytest.raises(NameTaken, match=r"\(created, image sha256:ab12\)"):
        deploy(engine, stores(), D, say=lambda _: None)


# --- the gate's verdict --------------------------------------------------------------------

def test_gatekeeper_is_asked_about_this_service_and_version_for_the_deploy_timeout(gate):
    s, said = stores(), []
    d = Deployment.of("demo", "reg:5000/demo:v2", timeout=42.0)
    deploy(FakeEngine(), s, d, say=said.append)
    [(asked_stores, service, version, timeout, say)] = gate.calls
    assert (asked_stores, service, version, timeout) == (s, "demo", "v2", 42.0)
    assert say == said.append, "wait's progress goes to the same output"


def test_an_admitted_version_exits_0_and_keeps_running(gate):
    engine = FakeEngine()
    assert deploy(engine, stores(), D, say=lambda _: None) == WAIT_OK == 0
    assert engine.started[0].removed is None


@pytest.mark.parametrize("outcome, code", [(WAIT_FAILED, 1), (WAIT_TIMEOUT, 4)])
def test_a_failed_or_timed_out_version_is_removed_and_the_old_one_goes_on(gate, outcome, code):
    engine, said = FakeEngine(), []
    gate.outcome = outcome
    assert deploy(engine, stores(RoutingPolicy("demo", stable="v1")), D, say=said.append) == outcome == code
    assert engine.started[0].removed == {"force": True}
    assert said[-1] == "removed demo-v2; demo still serves v1"


@pytest.mark.parametrize("outcome", [WAIT_FAILED, WAIT_TIMEOUT])
def test_keep_failed_leaves_a_failed_container_for_inspection(gate, outcome):
    engine, said = FakeEngine(), []
    gate.outcome = outcome
    d = Deployment.of("demo", "reg:5000/demo:v2", keep_failed=True)
    assert deploy(engine, stores(), d, say=said.append) == outcome
    assert engine.started[0].removed is None and not any(s.startswith("removed") for s in said)


@pytest.mark.parametrize("policies", [FakePolicies(None), FakePolicies(RoutingPolicy("demo", stable="")),
                                      FakePolicies(error=InvalidValue("stable", "../x", "a version"))])
def test_without_a_readable_stable_version_the_message_says_nothing_serves(policies):
    assert serving(policies, "demo") == "demo has no stable version"


def test_the_stable_version_is_named_when_there_is_one():
    policies = FakePolicies(RoutingPolicy("demo", stable="v1", canary="v2", weight=10))
    assert serving(policies, "demo") == "demo still serves v1"
    assert serving(policies, "other") == "other has no stable version"
