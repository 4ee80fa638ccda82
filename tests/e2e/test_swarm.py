"""Swarm services through the gate, on the real Engine in swarm mode, Consul and nginx:
scaling, rolling updates (good and broken), and a killed task, each under keep-alive load."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import SESSION
from tests.support.load import KeepAliveLoad
from tests.support.processes import get_json
from tests.support.stack import Stack
from tests.support.swarm import docker, ensure_swarm, gated_service_args, remove_services, tasks

pytestmark = pytest.mark.e2e

PORT = 18020


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    turned_on = ensure_swarm()
    s = Stack(consul_server, tmp_path_factory.mktemp("swarm"), docker_client, f"{SESSION}sw", PORT,
              drain_seconds=1).start()
    yield s
    remove_services(s.session)
    s.wait(lambda: not s.store.instances("swscale") and not s.store.instances("swupdate"), 60,
           "the services' instances to leave Consul")
    s.stop()
    if turned_on:
        docker("swarm", "leave", "--force")


class Watcher:
    """Every instance of a service as Consul has it; remembers any that answered a proxied
    request before its gate opened (the demo counts proxied requests on /stats)."""

    def __init__(self, stack: Stack, service: str):
        self.stack, self.service = stack, service
        self.served_before_gate = []

    def instances(self):
        out = self.stack.store.instances(self.service)
        for ri in out:
            if not ri.admitted:
                status, stats = get_json(ri.instance.port, "/stats")
                if status == 200 and stats.get("proxied"):
                    self.served_before_gate.append((ri.instance.id, stats))
        return out

    def admitted(self, version=None):
        return [ri for ri in self.instances() if ri.admitted and version in (None, ri.instance.version)]


def load_for(stack: Stack, service: str) -> KeepAliveLoad:
    return KeepAliveLoad("127.0.0.1", stack.listen_port, headers={"Host": f"{service}.test"},
                         connections=10, rate=10).start()


def served(stack: Stack, service: str) -> str:
    status, body = stack.get(headers={"Host": f"{service}.test"})
    return body.get("version") if status == 200 else ""


def test_scale_out_and_in_through_the_gate_under_load(stack):
    name = "swscale"
    docker(*gated_service_args(name, stack.session, 1, "demo:v1"))
    w = Watcher(stack, name)
    stack.wait(lambda: served(stack, name) == "v1", 120, "the first task to pass its gate and be served")
    load = load_for(stack, name)
    try:
        docker("service", "scale", "--detach", f"{name}=5")
        stack.wait(lambda: len(w.admitted()) == 5, 180, "five admitted instances")
        assert len(tasks(name)) == 5
        docker("service", "scale", "--detach", f"{name}=1")
        stack.wait(lambda: len(w.instances()) == 1 and len(tasks(name)) == 1, 120, "back to one instance")
        time.sleep(2)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert load.total > 500 and set(load.versions) == {"v1"}
    assert w.served_before_gate == []


def test_rolling_update_goes_task_by_task_through_the_gate_and_a_broken_one_rolls_back(stack):
    name = "swupdate"
    docker(*gated_service_args(name, stack.session, 3, "demo:v1"))
    w = Watcher(stack, name)
    stack.wait(lambda: len(w.admitted("v1")) == 3 and served(stack, name) == "v1", 180, "three admitted v1 tasks")
    load = load_for(stack, name)
    try:
        docker("service", "update", "--detach", "--image", "demo:v2", name)
        stack.wait(lambda: len(w.admitted("v2")) == 3 and len(w.instances()) == 3, 240,
                   "every task replaced by an admitted v2 one")
        stack.wait(lambda: all(t["image"] == "demo:v2" for t in tasks(name)), 30, "Swarm to see only v2 tasks")
        assert served(stack, name) == "v2"

        # demo:v3 builds but fails its integration tests: the update stops at its first task
        docker("service", "update", "--detach", "--image", "demo:v3", name)
        stack.wait(lambda: any(ri.instance.version == "v3" for ri in w.instances()), 60, "a v3 task to register")
        state = lambda: json.loads(docker("service", "inspect", name, "--format", "{{json .UpdateStatus}}") or "{}")
        stack.wait(lambda: state().get("State", "").startswith("rollback"), 120, "Swarm to roll the update back")
        stack.wait(lambda: all(t["image"] == "demo:v2" for t in tasks(name)) and len(tasks(name)) == 3
                   and len(w.admitted("v2")) == 3 and len(w.instances()) == 3, 120,
                   "three admitted v2 tasks again, no v3 left")
        time.sleep(2)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert set(load.versions) <= {"v1", "v2"} and load.versions["v2"] > 0
    assert w.served_before_gate == []
    history = stack.gatekeeper_cli("history", name)[1]
    assert "update rolled back" in history and "demo:v3" in history and "failed" in history, history
    assert served(stack, name) == "v2"


def test_a_killed_task_is_replaced_and_its_replacement_gated(stack):
    name = "swscale"
    w = Watcher(stack, name)
    docker("service", "scale", "--detach", f"{name}=2")
    stack.wait(lambda: len(w.admitted()) == 2, 180, "two admitted instances")
    load = load_for(stack, name)
    try:
        victim = w.admitted()[0].instance
        stack.docker.containers.get(victim.container_id).kill()
        stack.wait(lambda: victim.id not in {ri.instance.id for ri in w.instances()}, 30, "the killed task to leave")
        stack.wait(lambda: len(w.admitted()) == 2, 180, "a replacement task admitted")
        replacement = [ri for ri in w.admitted() if ri.instance.container_id != victim.container_id]
        assert len(replacement) == 2
        verdicts = [stack.store.verdict(ri.instance.id) for ri in replacement]
        assert all(v and v.container_id == ri.instance.container_id for v, ri in zip(verdicts, replacement))
        time.sleep(1)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert w.served_before_gate == []
