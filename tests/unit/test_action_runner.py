"""registrator's action runner: each container action gatekeeper asks of this node is carried
out once per record, and again only when the record is written again or the engine failed.
(Against real engines: tests/integration/test_docker_source.py carries actions out on the
engine, tests/e2e/test_healing.py and test_zero_reload.py through the whole stack, and
tests/e2e/test_cluster.py on another host than gatekeeper's.)"""
import threading
import time

from catalog.model import ContainerAction, Instance
from registrator.actions import ActionRunner, to_do
from tests.support.fakes import NodeRecords


def action(kind="stop", written=1.0, container="c1"):
    return ContainerAction(kind, container, "t1", "drained", 10, written)


def test_only_records_not_taken_on_yet_are_to_do():
    records = {"a": action(written=1.0), "b": action(written=2.0), "c": action(written=3.0)}
    assert set(to_do(records, {"a": 1.0, "b": 1.5})) == {"b", "c"}, "b was written again since; c is new"


class Engine:
    def __init__(self, fail=0):
        self.calls, self.fail = [], fail
        self.done = threading.Event()

    def __call__(self, kind, container_id, started, timeout):
        self.calls.append((kind, container_id, started, timeout))
        if self.fail:
            self.fail -= 1
            raise ConnectionError("engine away")
        self.done.set()
        return "stopped"


class Store(NodeRecords):
    """One fake for both stores the runner reads: this agent's instances registered by this
    registrator, a on container c1 (InstanceStore: node_name, local), and its node's container
    actions (NodeRecordStore: actions)."""
    def __init__(self, records=None):
        super().__init__(records)
        self.instances = {"a": Instance(id="a", service="demo", address="127.0.0.1", port=1, version="v1",
                                        container_id="c1", container_name="a", image="demo:v1",
                                        registered_by="registrator@h2")}
        self.reads = 0

    def local(self, registered_by=None):
        assert registered_by == "registrator@h2"
        self.reads += 1
        return dict(self.instances)

    def actions(self, node, index=0, wait=0.0):
        return self.answer(node, index, wait)


def runner(engine):
    store = Store()
    return ActionRunner(store, store, engine, "registrator@h2", threading.Event())


def settle(engine, n):
    """Wait until the runner's threads have made `n` engine calls."""
    deadline = time.monotonic() + 5
    while len(engine.calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def test_nothing_is_done_before_the_records_were_read_once():
    engine = Engine()
    assert runner(engine).apply() == 0 and engine.calls == []


def test_each_record_is_carried_out_once_and_again_when_written_again():
    engine = Engine()
    r = runner(engine)
    r.records = {"a": action()}
    assert r.apply() == 1
    settle(engine, 1)
    reads = r.instances.reads
    assert r.apply() == 0, "the same record is not done twice"
    assert r.instances.reads == reads, "and with nothing to do, the agent is not asked"
    assert engine.calls == [("stop", "c1", "t1", 10)]
    r.records = {"a": action(kind="restart", written=2.0)}
    assert r.apply() == 1
    settle(engine, 2)
    assert engine.calls[-1] == ("restart", "c1", "t1", 10)


def test_an_engine_failure_leaves_the_record_to_do_and_a_removed_record_is_forgotten():
    engine = Engine(fail=1)
    r = runner(engine)
    r.records = {"a": action()}
    r.apply()
    settle(engine, 1)
    assert r.apply() == 1, "tried again after the engine failed"
    settle(engine, 2)
    assert engine.done.is_set() and len(engine.calls) == 2
    r.records = {}
    r.apply()
    assert r.done == {}


def test_a_container_not_registered_here_is_not_acted_on_until_it_is():
    engine = Engine()
    r = runner(engine)
    r.records = {"a": action(container="c9"), "b": action()}
    assert r.apply() == 0, "a names another container than a's; b is not registered here"
    r.instances.instances["b"] = Instance(id="b", service="demo", address="127.0.0.1", port=2, version="v1",
                                      container_id="c1", container_name="b", image="demo:v1",
                                      registered_by="registrator@h2")
    assert r.apply() == 1, "b registered (a sync came after the record): done now"
    settle(engine, 1)
    assert engine.calls == [("stop", "c1", "t1", 10)]


def test_started_it_follows_its_own_nodes_actions_with_blocking_queries():
    engine = Engine()
    stopping = threading.Event()
    store = Store({"a": action()})
    ActionRunner(store, store, engine, "registrator@h2", stopping, wait=0.05).start()
    settle(engine, 1)
    deadline = time.monotonic() + 5
    while len(store.asked) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopping.set()
    assert engine.calls == [("stop", "c1", "t1", 10)], "carried out once, though the answer came again"
    assert store.asked[0] == ("h2", 0) and store.asked[1] == ("h2", 2), "then it blocks on the answer's index"


def test_a_start_is_for_a_container_that_is_not_registered_here_and_a_remove_for_any():
    engine = Engine()
    r = runner(engine)
    r.records = {"a": action(kind="start", container="c1"), "gone": action(kind="start", container="c7")}
    assert r.apply() == 1, "a is registered on c1, so c1 is running: only the drained c7 is started"
    settle(engine, 1)
    assert engine.calls == [("start", "c7", "t1", 10)]
    r.records = {"a": action(kind="start", container="c9", written=2.0)}
    assert r.apply() == 1, "a record for an earlier container of the same instance id: the engine decides"
    r.records = {"a": action(kind="remove", container="c1", written=3.0), "old": action(kind="remove", container="c8")}
    assert r.apply() == 2, "a remove, registered or not: the drain's stop may be under way; the engine decides"
    settle(engine, 4)
    assert sorted(engine.calls[-2:]) == [("remove", "c1", "t1", 10), ("remove", "c8", "t1", 10)]
