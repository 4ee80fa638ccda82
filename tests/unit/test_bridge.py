from dataclasses import replace

from catalog.model import Instance
from registrator.bridge import Bridge
from registrator.translate import Settings
from tests.support.fakes import FakeDocker, InMemoryRegistry

S = Settings(hostname="h", registered_by="registrator@h")
L = {"SERVICE_NAME": "demo", "gatekeeper.tests": "demo-test:latest"}


def setup():
    reg, dock = InMemoryRegistry(), FakeDocker()
    return reg, dock, Bridge(reg.instances, reg.rejections, dock, S)


def test_start_registers_and_stop_deregisters():
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels=L)
    bridge.add("c1")
    assert list(reg.services) == ["h:web1:8080"]
    bridge.remove("c1")
    assert reg.services == {}


def test_add_of_a_container_already_gone_registers_nothing():
    reg, dock, bridge = setup()
    bridge.add("gone")
    assert reg.services == {} and reg.calls == []


def test_sync_adds_missing_removes_own_stale_and_leaves_others_alone():
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels=L)
    foreign = Instance(id="other:x:1", service="x", address="127.0.0.1", port=1, version="v1",
                       container_id="zz", container_name="x", image="x:v1", registered_by="registrator@other")
    stale = Instance(id="h:old:8080", service="demo", address="127.0.0.1", port=2, version="v0",
                     container_id="c0", container_name="old", image="demo:v0", registered_by="registrator@h")
    reg.services.update({foreign.id: foreign, stale.id: stale})
    bridge.sync()
    assert set(reg.services) == {"h:web1:8080", "other:x:1"}


def test_resync_never_reregisters_an_unchanged_instance():
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels=L)
    bridge.sync()
    reg.calls.clear()
    fresh = Bridge(reg.instances, reg.rejections, dock, S)           # a restarted registrator
    fresh.sync()
    fresh.add("c1")                        # a late start event
    assert reg.calls == []


def test_rejected_container_is_recorded_not_registered():
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels={"SERVICE_NAME": "demo", "proxy.path": "/x;y/"})
    bridge.add("c1")
    assert reg.services == {}
    assert "proxy.path" in reg.rejected["web1"].reason


def test_docker_health_is_mirrored_once_per_change():
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels=L, health="starting")
    bridge.add("c1")
    assert reg.docker_health == {"h:web1:8080": "starting"}
    bridge.health_changed("c1", "healthy")
    bridge.health_changed("c1", "healthy")
    assert [c for c in reg.calls if c[0] == "docker_health"] == [
        ("docker_health", "h:web1:8080", "starting"), ("docker_health", "h:web1:8080", "healthy")]


def test_a_restarted_registrator_mirrors_current_health_at_sync():
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels=L, health="healthy")
    Bridge(reg.instances, reg.rejections, dock, S).sync()
    assert reg.docker_health == {"h:web1:8080": "healthy"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_rejection_names_its_service_and_is_replaced_when_the_container_is_fixed():
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels={"SERVICE_NAME": "uxbad", "proxy.path": "/x;y/"})
    bridge.add("c1")
    bridge.add("c1")                                     # the same refusal is written once
    assert reg.rejected["web1"].service == "uxbad" and reg.rejected["web1"].registered_by == "registrator@h"
    assert [c for c in reg.calls if c[0] == "record_rejection"] == [("record_rejection", "web1")]
    dock.containers.pop("c1")
    dock.add("c2", "web1", labels={"SERVICE_NAME": "uxbad"})     # re-run under the same name, fixed
    bridge.add("c2")
    assert list(reg.services) == ["h:web1:8080"] and reg.rejected == {}


def test_a_gone_containers_rejection_is_forgotten_after_the_grace_period_only():
    reg, dock, clock = InMemoryRegistry(), FakeDocker(), Clock()
    bridge = Bridge(reg.instances, reg.rejections, dock, S, forget_after=600, clock=clock)
    dock.add("c1", "web1", labels={"SERVICE_NAME": "demo", "proxy.path": "/x;y/"})
    dock.add("c3", "other", labels={"SERVICE_NAME": "demo", "proxy.path": "/x;y/"})
    bridge.sync()
    from catalog.model import Rejection
    reg.rejections.put(Rejection("theirs", "c9", "bad", "demo", "registrator@elsewhere"))
    clock.now += 10_000
    bridge.sync()
    assert set(reg.rejected) == {"web1", "other", "theirs"}, "running containers keep their record"
    dock.containers.pop("c1")
    bridge.remove("c1")
    clock.now += 599
    bridge.sync()
    assert "web1" in reg.rejected
    clock.now += 2
    bridge.sync()
    assert set(reg.rejected) == {"other", "theirs"}, "only our own record of a gone container goes"


def test_a_skipped_container_is_logged_once_with_the_reason(caplog):
    import logging
    reg, dock = InMemoryRegistry(), FakeDocker()
    bridge = Bridge(reg.instances, reg.rejections, dock, Settings(hostname="h", registered_by="r", explicit=True))
    dock.add("c1", "web1", labels={"proxy.path": "/a b/"})
    with caplog.at_level(logging.INFO, logger="registrator.bridge"):
        bridge.add("c1")
        bridge.sync()
        bridge.add("c1")
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == ["container web1 (c1) skipped: it has no SERVICE_NAME and registrator runs with --explicit"]
    assert reg.services == {} and reg.rejected == {}


def test_a_container_stopped_and_started_again_has_its_health_mirrored_anew():
    """Its new registration's Docker-health check starts critical: the health it had before the
    stop must be written again, or it would never be admitted."""
    reg, dock, bridge = setup()
    dock.add("c1", "web1", labels=L, health="healthy")
    bridge.add("c1")
    dock.containers["c1"] = replace(dock.containers["c1"], running=False)
    bridge.add("c1")                                   # the stop event: it is not running
    assert reg.services == {}
    dock.add("c1", "web1", labels=L, health="healthy")  # `docker start`: same id, healthy again
    bridge.add("c1")
    assert [c for c in reg.calls if c[0] == "docker_health"] == [
        ("docker_health", "h:web1:8080", "healthy"), ("docker_health", "h:web1:8080", "healthy")]


def test_a_rejection_whose_container_went_unseen_is_forgotten_a_grace_period_after_the_sync_that_found_it_gone():
    """Containers that went while registrator was down: the next sync finds them gone, and the
    grace period counts from then. One that runs again in the meantime keeps its record."""
    bad = {"SERVICE_NAME": "demo", "proxy.path": "/x;y/"}
    reg, dock, clock = InMemoryRegistry(), FakeDocker(), Clock()
    bridge = Bridge(reg.instances, reg.rejections, dock, S, forget_after=600, clock=clock)
    dock.add("c1", "web1", labels=bad)
    dock.add("c2", "web2", labels=bad)
    bridge.sync()
    dock.containers.pop("c1")
    dock.containers.pop("c2")
    clock.now += 5_000
    bridge.sync()                                      # both found gone: the grace starts now
    clock.now += 599
    bridge.tick()
    assert set(reg.rejected) == {"web1", "web2"}
    dock.add("c2", "web2", labels=bad)                 # started again before the grace ran out
    bridge.sync()
    clock.now += 2
    bridge.tick()
    assert set(reg.rejected) == {"web2"}
    clock.now += 10_000
    bridge.tick()
    assert set(reg.rejected) == {"web2"}, "a running container's rejection stays"
