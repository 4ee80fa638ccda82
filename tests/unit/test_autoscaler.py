"""The autoscaler carried out (gatekeeper.fleet.autoscaler) and `gatekeeper scale`: which Swarm
services it measures, what it counts as admitted, what it asks Swarm for, what it records and
when, what an operator reads, and the loop that runs it while this gatekeeper leads; on fakes
shaped like catalog.stores and gatekeeper.fleet.swarm. The decisions themselves are
tests/unit/test_scaling.py; Swarm, Consul and Prometheus for real: tests/e2e/test_swarm.py."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from catalog.errors import Refused
from catalog.model import Instance, RegisteredInstance
from catalog.validation import InvalidValue
from gatekeeper.fleet.autoscaler import Autoscaler, scale_by_hand
from gatekeeper.fleet.scaling import Load
from gatekeeper.fleet.swarm import SwarmError, SwarmService
from tests.support.fakes import FakeSwarm as Swarm

BY_AUTOSCALER = "gatekeeper (autoscaler)"


class Instances:
    def __init__(self, store):
        self.store = store

    def of(self, service):
        return [ri for ri in self.store.registered if ri.instance.service == service]


class Scalings:
    """The scaling store: the last change per service."""

    def __init__(self):
        self.records = {}

    def get(self, service):
        return self.records.get(service)

    def put(self, service, record):
        self.records[service] = dict(record)


class History(list):
    def add(self, service, event, **details):
        self.append((service, event, details))


class Stores:
    def __init__(self, registered=()):
        self.registered = list(registered)
        self.instances, self.scaling, self.history = Instances(self), Scalings(), History()


def svc(replicas=2, label="min=1,max=4", name="demo-svc", service="demo"):
    """A Swarm service `name` whose tasks register in Consul as `service`."""
    return SwarmService("id1", name, 7, replicas, "demo:v1", {"gatekeeper.scale": label} if label else {},
                        registers_as=service)


def task(n, admitted=True, swarm_service="demo-svc", service="demo"):
    inst = Instance(id=f"h:{swarm_service}.{n}:8080", service=service, address="127.0.0.1", port=30000 + n,
                    version="v1", container_id=f"c{n}", container_name=f"{swarm_service}.{n}", image="demo:v1",
                    registered_by="r", swarm_service=swarm_service, swarm_task=f"t{n}" if swarm_service else "")
    return RegisteredInstance(inst, {inst.gate_check_id: "passing" if admitted else "critical"})


class Loads:
    """The traffic figures asked for, as (service, window); answers `load`."""

    def __init__(self, load):
        self.load, self.asked = load, []

    def __call__(self, service, window):
        self.asked.append((service, window))
        return self.load


def autoscaler(swarm, stores, load=Load(None), now=1000.0):
    loads = Loads(load)
    return Autoscaler(stores, swarm, loads, lambda: True, clock=lambda: now), loads


# --- `gatekeeper scale SERVICE N` ----------------------------------------------------------------

def test_by_hand_the_labels_min_and_max_themselves_are_allowed():
    swarm, stores = Swarm(svc(replicas=2, label="min=1,max=4")), Stores()
    scale_by_hand(stores, swarm, "demo", 1)
    scale_by_hand(stores, swarm, "demo", 4)
    assert swarm.scaled == [("demo-svc", 1), ("demo-svc", 4)]


def test_a_service_without_a_label_can_be_set_anywhere_from_0_to_1000_by_hand():
    for replicas in (0, 1000):
        swarm = Swarm(svc(replicas=2, label=None))
        _, message = scale_by_hand(Stores(), swarm, "demo", replicas)
        assert swarm.scaled == [("demo-svc", replicas)]
        assert message.endswith("each removed one leaves every proxy before it stops")   # no autoscaler note
    with pytest.raises(SwarmError) as exc:
        scale_by_hand(Stores(), Swarm(svc(replicas=2, label=None)), "demo", 1001)
    assert "outside demo's bounds 0..1000" in str(exc.value)


def test_a_change_by_hand_is_answered_recorded_with_its_time_and_kept_in_history():
    swarm, stores = Swarm(svc(replicas=2, label="min=1,max=4,rps=100")), Stores()
    before = time.time()
    found, message = scale_by_hand(stores, swarm, "demo", 3)
    after = time.time()
    assert found.name == "demo-svc" and swarm.scaled == [("demo-svc", 3)]
    assert message == ("demo: 2 -> 3 replica(s); each new task is tested before it takes traffic, each removed one "
                       "leaves every proxy before it stops (the autoscaler may change it again as load changes)")
    record = stores.scaling.get("demo")
    assert before <= record.pop("time") <= after
    assert record == {"replicas": 3, "previous": 2, "reason": "set by hand", "by": "operator"}
    assert stores.history == [("demo", "scaled", {"replicas": 3, "previous": 2, "reason": "set by hand",
                                                  "by": "operator"})]


def test_a_change_by_hand_starts_the_autoscalers_cooldown():
    swarm, stores = Swarm(svc(replicas=2, label="min=1,max=4,rps=100,cooldown=30")), Stores()
    scale_by_hand(stores, swarm, "demo", 4)
    swarm.services["demo"] = svc(replicas=4, label="min=1,max=4,rps=100,cooldown=30")
    stores.registered = [task(n) for n in range(1, 5)]
    a = Autoscaler(stores, swarm, Loads(Load(0.0)), lambda: True)       # the real clock, as scale_by_hand's
    d = a.scale(swarm.services["demo"])
    assert d.replicas == 4 and "(cooldown 30 s)" in d.reason
    assert swarm.scaled == [("demo-svc", 4)] and len(stores.history) == 1


def test_the_replica_count_must_be_a_whole_number_of_zero_or_more():
    swarm, stores = Swarm(svc()), Stores()
    for bad in (-1, True, "3", 2.0, None):
        with pytest.raises(InvalidValue) as exc:
            scale_by_hand(stores, swarm, "demo", bad)
        assert (exc.value.field, exc.value.value, exc.value.rule) == \
            ("replicas", bad, "a whole number of replicas, 0 or more")
    assert str(exc.value) == "replicas=None is invalid: a whole number of replicas, 0 or more"
    assert swarm.scaled == [] and stores.history == []


def test_the_refusals_an_operator_reads_say_what_to_do():
    def refusal(stores, swarm, replicas=2):
        with pytest.raises(SwarmError) as exc:
            scale_by_hand(stores, swarm, "demo", replicas)
        assert swarm.scaled == [] and stores.history == []
        return str(exc.value)
    assert refusal(Stores(), Swarm(svc(), active=False)) == (
        "this Docker Engine is not a Swarm manager; replicas exist only for Swarm services "
        "(`scripts/stack.sh swarm` turns swarm mode on; docs/guides/swarm.md)")
    assert refusal(Stores(), Swarm()) == (
        "no Swarm service runs 'demo'; create one with `docker service create` (docs/guides/swarm.md)")
    assert refusal(Stores([task(1, swarm_service="")]), Swarm()) == (
        "no Swarm service runs 'demo' (its instances are plain containers: start more with docker run); create one "
        "with `docker service create` (docs/guides/swarm.md)")
    assert refusal(Stores(), Swarm(svc(replicas=None))) == \
        "Swarm service demo-svc is global (one task per node); it has no replica count"
    assert refusal(Stores(), Swarm(svc()), 5) == (
        "5 replicas is outside demo's bounds 1..4 (label gatekeeper.scale on Swarm service demo-svc); choose a "
        "number in range or change the label")


def test_the_same_count_again_changes_and_records_nothing():
    swarm, stores = Swarm(svc(replicas=2)), Stores()
    assert scale_by_hand(stores, swarm, "demo", 2)[1] == "demo: already 2 replica(s); nothing changed"
    assert swarm.scaled == [] and stores.scaling.records == {} and stores.history == []


# --- the autoscaler ------------------------------------------------------------------------------

def test_it_measures_the_consul_service_over_the_labels_window_and_records_the_figures():
    swarm = Swarm(svc(replicas=2, label="min=1,max=6,rps=100,window=4"))
    stores = Stores([task(1), task(2)])
    a, loads = autoscaler(swarm, stores, Load(350.0, 80.0), now=1234.0)
    a.tick()
    assert loads.asked == [("demo", 4.0)]
    assert swarm.scaled == [("demo-svc", 4)]
    reason = "350 req/s at 100 req/s per instance needs 4"
    assert stores.history == [("demo", "scaled", {"replicas": 4, "previous": 2, "reason": reason, "by": BY_AUTOSCALER,
                                                  "admitted": 2, "rate": 350.0, "p99_ms": 80.0})]
    assert stores.scaling.get("demo") == {"time": 1234.0, "replicas": 4, "previous": 2, "reason": reason,
                                          "by": BY_AUTOSCALER}


def test_only_this_swarm_services_admitted_tasks_count_as_ready():
    label = "min=1,max=6,rps=100"
    others = [task(3, admitted=False),                                   # still in its gate
              task(4, swarm_service="other-svc"),                         # another Swarm service, same name
              task(5, swarm_service="")]                                  # a plain container of demo
    stores = Stores([task(1), task(2)] + others)
    swarm = Swarm(svc(replicas=3, label=label))
    a, _ = autoscaler(swarm, stores, Load(900.0))
    d = a.scale(swarm.services["demo"])
    assert d.replicas == 3 and d.reason == "holding: 2 of 3 replicas admitted so far" and swarm.scaled == []
    swarm = Swarm(svc(replicas=2, label=label))
    a, _ = autoscaler(swarm, stores, Load(900.0))
    a.tick()
    assert swarm.scaled == [("demo-svc", 4)] and stores.history[-1][2]["admitted"] == 2


def test_a_service_with_bounds_only_is_never_measured_and_only_brought_within_them():
    swarm, stores = Swarm(svc(replicas=0, label="min=1,max=4")), Stores()
    a, loads = autoscaler(swarm, stores, Load(5000.0, 900.0))
    a.tick()
    assert loads.asked == [] and swarm.scaled == [("demo-svc", 1)]
    assert stores.history == [("demo", "scaled", {"replicas": 1, "previous": 0, "reason": "0 replicas is below the "
                                                  "minimum 1", "by": BY_AUTOSCALER, "admitted": 0})]


def test_figures_prometheus_did_not_give_are_left_out_of_history():
    swarm, stores = Swarm(svc(replicas=1, label="min=1,max=6,rps=100")), Stores([task(1)])
    a, _ = autoscaler(swarm, stores, Load(250.0))                         # no p99 (no requests timed)
    a.tick()
    details = stores.history[-1][2]
    assert details["rate"] == 250.0 and "p99_ms" not in details and details["replicas"] == 3


def test_a_scale_swarm_refuses_is_neither_recorded_nor_fatal():
    for error in (Refused("Swarm service demo-svc changed meanwhile"), InvalidValue("replicas", 3, "rule")):
        swarm, stores = Swarm(svc(replicas=1, label="min=1,max=6,rps=100"), refuse=error), Stores([task(1)])
        a, _ = autoscaler(swarm, stores, Load(250.0))
        assert a.scale(swarm.services["demo"]).replicas == 3
        assert stores.scaling.records == {} and stores.history == []


def test_each_reason_is_logged_once_until_it_changes(caplog):
    caplog.set_level(logging.INFO, logger="gatekeeper.fleet.autoscaler")
    swarm, stores = Swarm(svc(replicas=2, label="min=1,max=6,rps=100")), Stores([task(1), task(2)])
    a, loads = autoscaler(swarm, stores, Load(150.0))
    a.tick()
    a.tick()
    steady = "demo: steady at 2: 150 req/s at 100 req/s per instance needs 2"
    assert caplog.messages == [steady]
    loads.load = Load(120.0)
    a.tick()
    a.tick()
    assert caplog.messages == [steady, "demo: steady at 2: 120 req/s at 100 req/s per instance needs 2"]


def test_a_bad_label_is_logged_again_when_it_comes_back_after_a_fix(caplog):
    swarm, stores = Swarm(svc(replicas=1, label="min=5,max=1")), Stores([task(1)])
    a, loads = autoscaler(swarm, stores, Load(1000.0))
    a.tick()
    a.tick()
    assert swarm.scaled == [] and loads.asked == []
    swarm.services["demo"] = svc(replicas=1, label="min=1,max=4,rps=100")
    a.tick()
    assert swarm.scaled == [("demo-svc", 3)]
    swarm.services["demo"] = svc(replicas=3, label="min=5,max=1")
    a.tick()
    assert caplog.text.count("ignoring the gatekeeper.scale label") == 2


def test_the_loop_scales_only_while_this_gatekeeper_leads_and_outlives_a_failing_tick():
    stopping = threading.Event()
    leading = [False, False]                     # the first looks: another gatekeeper leads

    def is_leader():
        return leading.pop(0) if leading else True

    class Flaky(Swarm):
        """Consul unreachable, then a bug, then the service: scaled, and the test stops the loop."""
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.looks = []

        def scaled_services(self):
            self.looks.append(len(leading))
            if len(self.looks) == 1:
                raise ConnectionError("Consul at 127.0.0.1:8500 refused")
            if len(self.looks) == 2:
                raise RuntimeError("a bug")
            stopping.set()
            return super().scaled_services()

    swarm = Flaky(svc(replicas=0, label="min=1,max=4"))
    a = Autoscaler(Stores(), swarm, Loads(Load(None)), is_leader, interval=0.001)
    try:
        t = a.start(stopping)
        t.join(5)
        assert not t.is_alive()
    finally:
        stopping.set()
    assert swarm.looks == [0, 0, 0]              # never looked while another gatekeeper led
    assert swarm.scaled == [("demo-svc", 1)]
    assert t.name == "autoscaler"                # as thread dumps name it
    assert t.daemon                              # the daemon exits without waiting for it
