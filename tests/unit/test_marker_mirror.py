"""registrator's marker mirror: the gate markers gatekeeper decides are written into this host's
Swarm tasks, once each, only into the run they name. (Against a multi-node swarm:
tests/e2e/test_swarm_cluster.py; on one host: tests/e2e/test_swarm.py.)"""
import threading

from catalog.model import Instance, MarkerRecord
from registrator.markers import MarkerMirror


def task(name, container="c1", started="t1", mirror=True):
    return Instance(id=f"h2:{name}:8080", service="demo", address="127.0.0.1", port=8080, version="v1",
                    container_id=container, container_name=name, image="demo:v1",
                    registered_by="registrator@h2", started=started, gate_mirror=mirror)


class Local:
    """This agent's registrations (InstanceStore.local)."""

    def __init__(self, *instances):
        self.instances = {i.id: i for i in instances}

    def local(self, registered_by=None):
        return dict(self.instances)


def mirror(local, write):
    m = MarkerMirror(local, None, write, "registrator@h2", threading.Event())
    return m


def test_each_marker_is_written_once_into_the_run_it_names():
    a, b = task("a"), task("b", container="c2")
    written = []
    m = mirror(Local(a, b), lambda cid, started, state: written.append((cid, started, state)) or f"marker {state}")
    assert m.apply() == 0, "nothing before the records were read once"
    m.records = {a.id: MarkerRecord("open", "c1", "t1", 1.0), b.id: MarkerRecord("open", "c2", "t0", 1.0)}
    assert m.apply() == 1
    assert written == [("c1", "t1", "open")], "b's record names an earlier run: not written"
    assert m.apply() == 0, "written once"
    m.records = {a.id: MarkerRecord("closed", "c1", "t1", 2.0)}
    assert m.apply() == 1 and written[-1] == ("c1", "t1", "closed")


def test_a_task_without_the_gate_health_command_or_not_registered_here_gets_nothing():
    plain = task("plain", mirror=False)
    written = []
    m = mirror(Local(plain), lambda *a: written.append(a) or "marker open")
    m.records = {plain.id: MarkerRecord("open", "c1", "t1"), "h2:elsewhere:8080": MarkerRecord("open", "c9", "t1")}
    assert m.apply() == 0 and written == []


def test_a_failed_write_is_tried_again_at_the_next_apply():
    a = task("a")
    calls = []

    def write(cid, started, state):
        calls.append(state)
        if len(calls) == 1:
            raise OSError("the engine is restarting")
        return f"marker {state}"
    m = mirror(Local(a), write)
    m.records = {a.id: MarkerRecord("open", "c1", "t1")}
    assert m.apply() == 0
    assert m.apply() == 1 and calls == ["open", "open"]
