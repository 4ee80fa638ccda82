"""When gatekeeper aborts a canary by itself (the real-stack twin: tests/e2e/test_promotion.py)."""
from catalog.model import FAILED, PASSED, Instance, RegisteredInstance, RoutingPolicy, Verdict
from gatekeeper.promotion.promoter import Promoter


class Policies:
    def __init__(self, store):
        self.store = store

    def get(self, service):
        return 1, self.store.pol

    def put(self, policy, cas):
        self.store.pol = policy
        return True

    def rollback(self, service):
        return 0, None                     # no rollback waits here


class Verdicts:
    def __init__(self, store):
        self.store = store

    def get(self, iid):
        return Verdict(iid, "c2", "t", self.store.verdict_state, "s", 1, 2)


class History:
    def __init__(self, store):
        self.store = store

    def add(self, service, event, **details):
        self.store.hist.append((event, details))


class Instances:
    """The service's registered instances: `listed`."""

    def __init__(self, listed):
        self.listed = listed

    def of(self, service):
        return self.listed


class Store:
    """The stores the promoter reads and writes, in memory: the policy (`pol`), every verdict in
    `verdict_state`, the history (`hist`)."""

    def __init__(self, verdict_state=PASSED):
        self.pol = RoutingPolicy(service="demo", stable="v1", canary="v2", weight=20, mode="manual")
        self.verdict_state = verdict_state
        self.hist = []
        self.policies, self.verdicts, self.history = Policies(self), Verdicts(self), History(self)


def canary(gate="passing", health="critical"):
    inst = Instance(id="h:c2:8080", service="demo", address="127.0.0.1", port=2, version="v2",
                    container_id="c2", container_name="c2", image="demo:v2", registered_by="r")
    return [RegisteredInstance(inst, {inst.gate_check_id: gate, inst.health_check_id: health})]


def test_one_unhealthy_reading_does_not_abort_but_a_lasting_one_does():
    store = Store()
    p = Promoter(store, unhealthy_grace=0.3)
    p.reconcile("demo", canary())
    assert store.pol.canary == "v2"
    import time
    time.sleep(0.35)
    p.reconcile("demo", canary())
    assert store.pol.canary == "" and store.hist[-1][0] == "aborted"
    assert store.hist[-1][1]["by"] == "gatekeeper (auto-rollback)"
    assert p.next_due() is None, "nothing pending once aborted"


def test_a_pending_grace_period_tells_the_daemon_when_to_look_again():
    import time
    store = Store()
    p = Promoter(store, unhealthy_grace=10)
    assert p.next_due() is None
    p.reconcile("demo", canary())
    assert 9 < p.next_due() - time.monotonic() <= 10


def test_a_healthy_reading_resets_the_grace_period():
    store = Store()
    p = Promoter(store, unhealthy_grace=0.2)
    p.reconcile("demo", canary())
    p.reconcile("demo", canary(health="passing"))
    import time
    time.sleep(0.25)
    p.reconcile("demo", canary())
    assert store.pol.canary == "v2"


def test_failed_reverification_of_every_canary_instance_aborts_at_once():
    store = Store(verdict_state=FAILED)
    Promoter(store, unhealthy_grace=60).reconcile("demo", canary(gate="critical", health="passing"))
    assert store.pol.canary == ""


def test_an_aborted_canary_is_remembered_and_can_be_tried_again_only_while_admitted():
    import pytest

    from gatekeeper.promotion.promoter import PromotionError, abort, try_canary
    store = Store()
    admitted = canary(health="passing")
    store.instances = Instances(admitted)
    abort(store, "demo")
    assert (store.pol.canary, store.pol.aborted) == ("", "v2")
    policy, message = try_canary(store, "demo", "v2")
    assert (policy.canary, policy.weight, policy.aborted) == ("v2", 0, "") and "canary at 0%" in message
    with pytest.raises(PromotionError, match="already the stable"):
        try_canary(store, "demo", "v1")
    admitted[:] = canary(gate="critical", health="passing")
    with pytest.raises(PromotionError, match="no admitted instance"):
        try_canary(store, "demo", "v2")
