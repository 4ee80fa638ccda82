"""registrator's gate mirror: the local gate checks follow gatekeeper's records, fail closed.
(Against real Consul agents on several hosts: tests/e2e/test_cluster.py.)"""
import threading
import time

from catalog.model import GateRecord, Instance
from registrator.gates import NO_DECISION, GateMirror, differences
from tests.support.fakes import NodeRecords


def inst(name, container="c1", started="t1"):
    return Instance(id=f"h2:{name}:8080", service="demo", address="127.0.0.1", port=8080, version="v1",
                    container_id=container, container_name=name, image="demo:v1",
                    registered_by="registrator@h2", started=started)


def test_a_record_for_this_run_is_applied_with_its_output():
    a = inst("a")
    changes = differences({a.id: a}, {a.gate_check_id: ("critical", "testing")},
                          {a.id: GateRecord(True, "9/9 passed", "c1", "t1")})
    assert changes == [(a, True, "9/9 passed")]


def test_an_equal_check_is_left_alone():
    a = inst("a")
    assert differences({a.id: a}, {a.gate_check_id: ("passing", "9/9 passed")},
                       {a.id: GateRecord(True, "9/9 passed", "c1", "t1")}) == []


def test_a_new_output_with_the_same_status_is_applied():
    a = inst("a")
    changes = differences({a.id: a}, {a.gate_check_id: ("critical", "testing with demo-test")},
                          {a.id: GateRecord(False, "failed: 3/9 passed", "c1", "t1")})
    assert changes == [(a, False, "failed: 3/9 passed")]


def test_a_record_of_another_container_or_run_never_opens_the_gate():
    a = inst("a", container="c2")
    b = inst("b", started="t2")
    records = {a.id: GateRecord(True, "passed", "c1", "t1"), b.id: GateRecord(True, "passed", "c1", "t1")}
    b_same = inst("b", container="c1", started="t2")
    changes = differences({a.id: a, b.id: b_same}, {a.gate_check_id: ("passing", "passed"),
                                                     b.gate_check_id: ("critical", "")}, records)
    assert changes == [(a, False, NO_DECISION)], "a's passing gate is shut; b's shut one stays shut"


def test_a_forged_gate_without_any_record_is_shut_and_a_shut_one_is_not_rewritten():
    a, b = inst("a"), inst("b")
    changes = differences({a.id: a, b.id: b}, {a.gate_check_id: ("passing", "forged"),
                                               b.gate_check_id: ("critical", "registered")}, {})
    assert changes == [(a, False, NO_DECISION)]


def test_an_instance_whose_check_is_not_there_yet_is_skipped_and_the_others_still_applied():
    a, b = inst("a"), inst("b")
    records = {a.id: GateRecord(True, "ok", "c1", "t1"), b.id: GateRecord(True, "ok", "c1", "t1")}
    assert differences({a.id: a, b.id: b}, {b.gate_check_id: ("critical", "")}, records) == [(b, True, "ok")]


class Store(NodeRecords):
    """One fake for both stores the mirror reads: this agent's (InstanceStore: node_name, local,
    gate_checks, apply_gate) and its node's gate records (NodeRecordStore: gates)."""

    def __init__(self):
        super().__init__()             # no gate record at all
        self.instances = {}
        self.checks = {}
        self.applied = []

    def gates(self, node, index=0, wait=0.0):
        return self.answer(node, index, wait)

    def local(self, registered_by=None):
        return {i: x for i, x in self.instances.items() if registered_by in (None, x.registered_by)}

    def gate_checks(self):
        return dict(self.checks)

    def apply_gate(self, inst, passing, output):
        self.applied.append((inst.id, passing, output))
        self.checks[inst.gate_check_id] = ("passing" if passing else "critical", output)


def test_the_mirror_applies_nothing_before_it_has_read_the_records():
    store = Store()
    a = inst("a")
    store.instances[a.id] = a
    store.checks[a.gate_check_id] = ("passing", "9/9 passed")
    mirror = GateMirror(store, store, "registrator@h2", threading.Event())
    assert mirror.apply() == 0 and store.applied == [], "a restart must not shut admitted gates"
    mirror.records = {}
    assert mirror.apply() == 1 and store.applied == [(a.id, False, NO_DECISION)]


def test_the_mirror_applies_only_its_own_registrations_and_only_once():
    store = Store()
    mine, other = inst("a"), inst("b")
    other = Instance(**{**other.__dict__, "registered_by": "registrator@elsewhere"})
    for i in (mine, other):
        store.instances[i.id] = i
        store.checks[i.gate_check_id] = ("critical", "")
    mirror = GateMirror(store, store, "registrator@h2", threading.Event())
    mirror.records = {mine.id: GateRecord(True, "ok", "c1", "t1"), other.id: GateRecord(True, "ok", "c1", "t1")}
    assert mirror.apply() == 1 and store.applied == [(mine.id, True, "ok")]
    assert mirror.apply() == 0, "nothing left to change"


def test_started_it_follows_its_own_nodes_records_with_blocking_queries():
    store = Store()
    a = inst("a")
    store.instances[a.id] = a
    store.checks[a.gate_check_id] = ("passing", "forged")
    stopping = threading.Event()
    GateMirror(store, store, "registrator@h2", stopping, wait=0.05).start()
    deadline = time.monotonic() + 5
    while (not store.applied or len(store.asked) < 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    stopping.set()
    assert store.applied == [(a.id, False, NO_DECISION)], "the first answer (no record) shuts the forged gate"
    assert store.asked[0] == ("h2", 0) and store.asked[1] == ("h2", 2), "then it blocks on the answer's index"


def test_a_node_name_the_agent_does_not_give_at_first_is_asked_again_and_the_mirror_starts():
    """An agent at its connection limit (429), or an odd answer, at the registrator's start: the
    follower must not die with it, or no gate on this host would ever open."""
    import consul.base

    store = Store()
    a = inst("a")
    store.instances[a.id] = a
    store.checks[a.gate_check_id] = ("passing", "forged")
    answers = [consul.base.ClientError("429 Too Many Requests"), ValueError("not JSON")]
    real_node_name = store.node_name

    def node_name():
        if answers:
            raise answers.pop(0)
        return real_node_name()
    store.node_name = node_name
    stopping = threading.Event()
    GateMirror(store, store, "registrator@h2", stopping, wait=0.05).start()
    deadline = time.monotonic() + 10
    while not store.applied and time.monotonic() < deadline:
        time.sleep(0.01)
    stopping.set()
    assert store.applied == [(a.id, False, NO_DECISION)] and not answers
