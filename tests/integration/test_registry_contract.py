"""The in-memory instance store used by unit tests behaves like Consul on the same calls."""
import pytest

from catalog.model import HealthCheck, Instance
from registrator.bridge import same_registration
from testbed.processes import wait_until
from tests.support.fakes import InMemoryInstances


def make(unique, n=1, **kw):
    base = dict(id=f"{unique}:web{n}:8080", service=unique, address="127.0.0.1", port=30000 + n,
                version="v1", container_id=f"cid{n}", container_name=f"web{n}", image="demo:v1",
                registered_by=f"registrator@{unique}", tests_image="demo-test:latest",
                proxy_path=f"/{unique}/", tags=("a", "b"), extra_meta=(("region", "eu-1"),))
    base.update(kw)
    return Instance(**base)


@pytest.fixture(params=["memory", "consul"])
def registry(request, stores):
    if request.param == "memory":
        yield InMemoryInstances()
        return
    yield stores.instances
    for iid in stores.instances.local():
        if iid.startswith("t"):
            stores.instances.deregister(iid)


def test_register_reads_back_as_the_same_registration(registry, unique):
    inst = make(unique, health_check=HealthCheck("http", "/health"), docker_health=True)
    registry.register(inst)
    got = registry.local(inst.registered_by)
    assert list(got) == [inst.id]
    assert same_registration(got[inst.id], inst)


def test_local_instances_only_returns_the_asking_registrators(registry, unique):
    mine, theirs = make(unique, 1), make(unique, 2, registered_by="registrator@elsewhere")
    registry.register(mine)
    registry.register(theirs)
    assert list(registry.local(mine.registered_by)) == [mine.id]
    registry.deregister(theirs.id)


def test_deregister_removes_and_is_idempotent(registry, unique):
    inst = make(unique)
    registry.register(inst)
    registry.deregister(inst.id)
    registry.deregister(inst.id)
    assert registry.local(inst.registered_by) == {}


def test_registered_again_its_gate_stays_as_it_was(registry, unique):
    inst = make(unique)
    registry.register(inst)
    assert registry.gate_checks()[inst.gate_check_id][0] == "critical", "a new registration starts shut"
    registry.apply_gate(inst, True, "9/9 passed")
    registry.register(inst)
    assert registry.gate_checks()[inst.gate_check_id][0] == "passing", "registered again: still open"
    registry.deregister(inst.id)
    registry.register(inst)
    assert registry.gate_checks()[inst.gate_check_id][0] == "critical", "removed and registered: shut"


def test_the_catalog_holds_what_this_agent_registered_for_its_node(registry, unique):
    mine, theirs = make(unique, 1), make(unique, 2, registered_by="registrator@elsewhere")
    registry.register(mine)
    registry.register(theirs)
    wait_until(lambda: set(registry.in_catalog(mine.registered_by)) == {mine.id}, 10, "the agent's sync")
    registry.deregister(mine.id)
    wait_until(lambda: not registry.in_catalog(mine.registered_by), 10, "the removal synced")
