"""Swarm rolling updates through the gate (gatekeeper.rollout) on fakes; tests/e2e/test_swarm.py
runs them against Swarm, Consul and nginx."""
from catalog.model import FAILED, PASSED, Instance, MarkerRecord, RegisteredInstance, RoutingPolicy, Verdict
from gatekeeper.fleet.rollout import CLOSED, OPEN, Rollout, marker_state, serves
from gatekeeper.fleet.swarm import SwarmService, SwarmUnavailable


def ri(n, version="v1", admitted=True, mirror=True, image=None):
    inst = Instance(id=f"h:demo.{n}:8080", service="demo", address="127.0.0.1", port=30000 + n, version=version,
                    container_id=f"c{n}", container_name=f"demo.{n}", image=image or f"demo:{version}",
                    registered_by="r", swarm_service="demo", swarm_task=f"t{n}", gate_mirror=mirror, node="h")
    return RegisteredInstance(inst, {inst.gate_check_id: "passing" if admitted else "critical"})


def test_the_marker_opens_only_for_an_admitted_instance_of_a_version_that_takes_traffic():
    stable = RoutingPolicy("demo", stable="v1")
    assert serves(stable, "v1") and not serves(stable, "v2") and not serves(None, "v1")
    assert serves(RoutingPolicy("demo", stable="v1", canary="v2", weight=10), "v2")
    assert not serves(RoutingPolicy("demo", stable="v1", canary="v2", weight=0), "v2")   # manual: waits for promote
    assert serves(RoutingPolicy("demo", stable="v1", canary="v2", weight=1), "v2")
    assert marker_state(ri(1), stable) == OPEN
    assert marker_state(ri(1, admitted=False), stable) == CLOSED
    assert marker_state(ri(2, "v2"), stable) == CLOSED
    unhealthy = ri(3)
    unhealthy = RegisteredInstance(unhealthy.instance, {**unhealthy.checks, unhealthy.instance.health_check_id: "critical"})
    assert marker_state(unhealthy, stable) == OPEN           # the healer's to judge, not Swarm's retries


class Policies:
    def __init__(self, policy):
        self.p = policy

    def get(self, service):
        return 1, self.p


class History(list):
    """The history store: (event, details) in order."""

    def add(self, service, event, **details):
        self.append((event, details))


class Markers(list):
    """The node records store's gate markers: (container id, state) in the order asked, and the
    records they make (`markers`: as KV holds them, every task on one node here)."""

    def __init__(self):
        super().__init__()
        self.records = {}

    def set_marker(self, inst, state):
        assert inst.node, "a marker goes to the task's node"
        self.append((inst.container_id, state))
        self.records[inst.id] = MarkerRecord(state, inst.container_id, inst.started)

    def markers(self, node):
        return 0, dict(self.records)


class Store:
    """The stores a rollout reads and writes, in memory: the policy, the verdicts (instance id ->
    verdict, `get`), the history, the gate markers asked of each task's host (`node_records`)."""

    def __init__(self, policy, verdicts=()):
        self.policies, self.verdicts, self.history = Policies(policy), {v.instance_id: v for v in verdicts}, History()
        self.node_records = Markers()


class Swarm:
    def __init__(self, svc=None):
        self.svc, self.rollbacks = svc, []

    def service(self, name):
        return self.svc

    def roll_back(self, svc):
        self.rollbacks.append(svc.name)


def updating(image="demo:v2", state="updating"):
    return SwarmService("id", "demo", 9, 3, image, update_state=state, update_started="t0",
                        previous_image="demo:v1", registers_as="demo")


def test_markers_are_asked_of_the_tasks_host_on_change_only():
    store = Store(RoutingPolicy("demo", stable="v1"))
    r = Rollout(store, Swarm())
    tasks = [ri(1), ri(2, admitted=False), ri(3, mirror=False)]
    r.reconcile("demo", tasks)
    r.reconcile("demo", tasks)
    assert store.node_records == [("c1", OPEN)]              # a new task starts closed; no mirror, no marker
    r.reconcile("demo", [ri(1, admitted=False), ri(2)])
    assert store.node_records == [("c1", OPEN), ("c1", CLOSED), ("c2", OPEN)]


def test_a_new_task_failing_its_tests_rolls_the_update_back_once_with_the_reason():
    failed = Verdict("h:demo.4:8080", "c4", "demo-test:latest", FAILED, "3/9 passed")
    swarm = Swarm(updating())
    store = Store(RoutingPolicy("demo", stable="v1"), [failed])
    r = Rollout(store, swarm)
    r.reconcile("demo", [ri(1), ri(4, "v2", admitted=False)])
    r.reconcile("demo", [ri(1), ri(4, "v2", admitted=False)])
    assert swarm.rollbacks == ["demo"]
    assert store.history == [("update rolled back", {
        "version": "v2", "image": "demo:v2", "previous": "demo:v1", "by": "gatekeeper (swarm)",
        "reason": "task demo.4 of demo:v2 failed: 3/9 passed"})]


def test_no_rollback_without_an_update_for_an_old_image_or_for_a_pass():
    failed = Verdict("h:demo.4:8080", "c4", "t", FAILED, "3/9 passed")
    for svc, verdicts, image in ((updating(state="completed"), [failed], None),
                                 (updating(image="demo:v3"), [failed], None),
                                 (updating(), [Verdict("h:demo.4:8080", "c4", "t", PASSED, "9/9")], None),
                                 (updating(), [failed], "demo:v2@sha256:" + "0" * 64)):
        swarm = Swarm(svc)
        Rollout(Store(RoutingPolicy("demo", stable="v1"), verdicts), swarm).reconcile(
            "demo", [ri(4, "v2", admitted=False, image=image)])
        assert swarm.rollbacks == ([] if image is None else ["demo"]), (svc, verdicts, image)


class Silent(Swarm):
    """An engine that does not answer Swarm reads until told to."""
    answering = False

    def service(self, name):
        if not self.answering:
            raise SwarmUnavailable("the Docker Engine did not answer while listing Swarm services")
        return super().service(name)


def test_an_engine_that_does_not_answer_delays_the_rollback_to_a_later_pass_and_loses_it_not(caplog):
    failed = Verdict("h:demo.4:8080", "c4", "demo-test:latest", FAILED, "3/9 passed")
    swarm, store = Silent(updating()), Store(RoutingPolicy("demo", stable="v1"), [failed])
    r = Rollout(store, swarm)
    r.reconcile("demo", [ri(1), ri(4, "v2", admitted=False)])
    assert swarm.rollbacks == [] and "update not checked this pass" in caplog.text
    swarm.answering = True
    r.reconcile("demo", [ri(1), ri(4, "v2", admitted=False)])
    assert swarm.rollbacks == ["demo"]


class Swarms(Swarm):
    def __init__(self, services):
        super().__init__()
        self.services = services

    def service(self, name):
        return self.services.get(name)


def test_each_swarm_service_is_judged_on_its_own():
    from dataclasses import replace
    other = replace(ri(5, "v2").instance, swarm_service="other", id="h:other.5:8080", container_id="c5")
    failed = [Verdict("h:demo.4:8080", "c4", "t", FAILED, "3/9"), Verdict("h:other.5:8080", "c5", "t", FAILED, "1/9")]
    swarm = Swarms({"demo": updating(state="completed"), "other": replace(updating(), name="other")})
    Rollout(Store(RoutingPolicy("demo", stable="v1"), failed), swarm).reconcile(
        "demo", [ri(4, "v2", admitted=False), RegisteredInstance(other, {other.gate_check_id: "critical"})])
    assert swarm.rollbacks == ["other"]                      # demo's update is over; other's is not


def test_an_invalid_policy_keeps_every_marker_closed():
    from catalog.validation import InvalidValue

    class Broken(Policies):
        def get(self, service):
            raise InvalidValue("policy", "x", "valid JSON")
    swarm = Swarm()
    store = Store(None)
    store.policies = Broken(None)
    r = Rollout(store, swarm)
    r.written["demo"] = {"c1": OPEN}
    r.reconcile("demo", [ri(1)])
    assert store.node_records == [("c1", CLOSED)]
