"""The autoscaler's decision (gatekeeper.scaling) and `gatekeeper scale`'s refusals, on fakes;
tests/e2e/test_swarm.py runs both against Swarm, Consul, nginx and Prometheus."""
import pytest

from catalog.model import Instance, RegisteredInstance, Scaling
from catalog.validation import InvalidValue, parse_scale_label
from gatekeeper.fleet.autoscaler import Autoscaler, scale_by_hand
from gatekeeper.fleet.scaling import Load, decide
from gatekeeper.fleet.swarm import SwarmError, SwarmService
from tests.support.fakes import FakeSwarm

S = Scaling(min=1, max=6, rps=100, cooldown=30, step=2)


def test_replicas_follow_the_rate_per_admitted_instance_within_step_and_bounds():
    assert decide(S, 1, 1, Load(50), 100).replicas == 1
    assert decide(S, 1, 1, Load(100), 100).replicas == 1            # exactly at the target: enough
    assert decide(S, 1, 1, Load(101), 100).replicas == 2
    d = decide(S, 1, 1, Load(400), 100)
    assert d.replicas == 3 and "400 req/s" in d.reason and "needs 4" in d.reason      # at most `step` at once
    assert decide(S, 3, 3, Load(400), 100).replicas == 4
    assert decide(S, 5, 5, Load(5000), 100).replicas == 6               # never above max
    assert decide(S, 4, 4, Load(0), 100).replicas == 2                   # down by step, cooldown over
    assert decide(S, 2, 2, Load(0), 100).replicas == 1                   # never below min


def test_it_holds_while_new_replicas_are_in_the_gate_without_figures_or_in_the_cooldown():
    d = decide(S, 3, 2, Load(900), 100)
    assert d.replicas == 3 and "2 of 3 replicas admitted" in d.reason
    d = decide(S, 3, 3, Load(None, why="Prometheus at x: ConnectionError"), 100)
    assert d.replicas == 3 and "ConnectionError" in d.reason
    d = decide(S, 4, 4, Load(10), 29.9)
    assert d.replicas == 4 and "cooldown 30 s" in d.reason
    assert decide(S, 4, 4, Load(10), 30).replicas == 2
    assert decide(S, 1, 1, Load(900), 0).replicas == 3                  # scaling out has no cooldown


def test_bounds_apply_first_and_by_hand_only_services_are_left_alone():
    assert decide(S, 0, 0, Load(None), 0).replicas == 1
    assert decide(S, 9, 9, Load(None), 0).replicas == 6
    manual = Scaling(min=1, max=5)
    d = decide(manual, 3, 3, Load(1000), 999)
    assert d.replicas == 3 and "by hand" in d.reason


def test_latency_adds_a_replica_and_a_fast_service_without_a_rate_target_sheds_one():
    p = Scaling(min=1, max=5, p99_ms=200, cooldown=0)
    assert decide(p, 2, 2, Load(50, 350), 0).replicas == 3
    assert decide(p, 2, 2, Load(50, 150), 0).replicas == 2
    assert decide(p, 2, 2, Load(50, 90), 0).replicas == 1
    both = Scaling(min=1, max=5, rps=100, p99_ms=200)
    d = decide(both, 2, 2, Load(150, 400), 0)
    assert d.replicas == 3 and "p99 400 ms > 200 ms" in d.reason


def test_the_label_is_checked_setting_by_setting():
    assert parse_scale_label("min=2,max=8,rps=50") == Scaling(min=2, max=8, rps=50)
    assert parse_scale_label(" p99=300 , cooldown=5 ").p99_ms == 300
    for bad, field in (("min=3,max=2", "scale.max"), ("max=0", "scale.max"), ("rps=-1", "scale.rps"),
                       ("step=1.5", "scale.step"), ("speed=3", "gatekeeper.scale"), ("min", "gatekeeper.scale"),
                       ("window=nan", "scale.window")):
        with pytest.raises(InvalidValue) as exc:
            parse_scale_label(bad)
        assert exc.value.field == field, bad


class FakeStore:
    """The stores the autoscaler takes (instances, scaling, history), in memory: `registered`
    instances, scaling `records` by service, `history` as (service, event, details)."""

    def __init__(self, instances=()):
        self.registered, self.records, self.history = list(instances), Records(), History()
        self.instances, self.scaling = Instances(self), self.records


class Instances:
    def __init__(self, store):
        self.store = store

    def of(self, service):
        return [ri for ri in self.store.registered if ri.instance.service == service]


class Records(dict):
    def put(self, service, record):
        self[service] = record


class History(list):
    def add(self, service, event, **details):
        self.append((service, event, details))


def svc(replicas=2, label="min=1,max=4", name="demo"):
    return SwarmService("id1", name, 7, replicas, "demo:v1", {"gatekeeper.scale": label} if label else {},
                        registers_as=name)


def task(n, admitted=True):
    inst = Instance(id=f"h:demo.{n}:8080", service="demo", address="127.0.0.1", port=30000 + n, version="v1",
                    container_id=f"c{n}", container_name=f"demo.{n}", image="demo:v1", registered_by="r",
                    swarm_service="demo", swarm_task=f"t{n}")
    return RegisteredInstance(inst, {inst.gate_check_id: "passing" if admitted else "critical"})


def test_scale_by_hand_within_bounds_records_why_and_refuses_the_rest_changing_nothing():
    swarm, store = FakeSwarm(svc()), FakeStore()
    _, message = scale_by_hand(store, swarm, "demo", 4)
    assert swarm.scaled == [("demo", 4)] and "2 -> 4" in message
    assert store.records["demo"]["by"] == "operator" and store.history[0][1] == "scaled"
    for args, words in (((5,), "outside demo's bounds 1..4"), ((0,), "outside demo's bounds 1..4")):
        with pytest.raises(SwarmError, match=words):
            scale_by_hand(store, swarm, "demo", *args)
    with pytest.raises(SwarmError, match="no Swarm service runs 'other'"):
        scale_by_hand(store, swarm, "other", 2)
    with pytest.raises(SwarmError, match="plain containers"):
        scale_by_hand(FakeStore([task(1)]), FakeSwarm(), "demo", 2)
    with pytest.raises(SwarmError, match="not a Swarm manager"):
        scale_by_hand(store, FakeSwarm(svc(), active=False), "demo", 2)
    with pytest.raises(SwarmError, match="label is invalid"):
        scale_by_hand(store, FakeSwarm(svc(label="min=9,max=2")), "demo", 2)
    with pytest.raises(InvalidValue):
        scale_by_hand(store, swarm, "demo", -1)
    assert swarm.scaled == [("demo", 4)] and len(store.history) == 1
    assert "nothing changed" in scale_by_hand(store, swarm, "demo", 2)[1]


def test_the_autoscaler_acts_on_the_decision_and_writes_its_figures_into_history():
    now = [1000.0]
    swarm = FakeSwarm(svc(replicas=1, label="min=1,max=4,rps=100,cooldown=10"))
    store = FakeStore([task(1)])
    a = Autoscaler(store, swarm, lambda service, window: Load(350.0, 80.0), lambda: True, clock=lambda: now[0])
    a.tick()
    assert swarm.scaled == [("demo", 3)]
    service, event, details = store.history[-1]
    assert (event, details["replicas"], details["previous"], details["rate"]) == ("scaled", 3, 1, 350.0)
    assert details["by"] == "gatekeeper (autoscaler)" and "needs 4" in details["reason"]
    assert store.records["demo"]["time"] == 1000.0
    swarm.services["demo"] = svc(replicas=4, label="min=1,max=4,rps=100,cooldown=10")
    store.registered = [task(i) for i in range(1, 5)]
    a.load = lambda service, window: Load(0.0)
    now[0] = 1005.0
    a.tick()
    assert swarm.scaled == [("demo", 3)]                      # within the cooldown of the last change
    now[0] = 1010.0
    a.tick()
    assert swarm.scaled == [("demo", 3), ("demo", 2)]


def test_a_bad_label_is_logged_once_and_the_service_left_alone(caplog):
    swarm = FakeSwarm(svc(replicas=1, label="min=5,max=1"))
    a = Autoscaler(FakeStore(), swarm, lambda service, window: Load(1000.0), lambda: True)
    a.tick()
    a.tick()
    assert swarm.scaled == [] and caplog.text.count("ignoring the gatekeeper.scale label") == 1


def test_every_reason_says_what_decided_it():
    assert decide(S, 0, 0, Load(None), 0).reason == "0 replicas is below the minimum 1"
    assert decide(S, 9, 9, Load(None), 0).reason == "9 replicas is above the maximum 6"
    assert decide(Scaling(min=1, max=5), 3, 3, Load(1), 0).reason == \
        "no target set (rps or p99): replicas change only by hand"
    assert decide(S, 2, 2, Load(None), 0).reason == "holding: no traffic figures (no data)"
    both = Scaling(min=1, max=5, rps=100, p99_ms=200)
    assert decide(both, 2, 2, Load(150, 400), 0).reason == \
        "150 req/s at 100 req/s per instance needs 2; p99 400 ms > 200 ms"
    assert decide(S, 6, 6, Load(900), 0).reason == "steady at 6 (the maximum): 900 req/s at 100 req/s per instance needs 9"
    assert decide(S, 1, 1, Load(20), 0).reason == "steady at 1 (the minimum): 20 req/s at 100 req/s per instance needs 1"
    assert decide(S, 3, 3, Load(250), 0).reason == "steady at 3: 250 req/s at 100 req/s per instance needs 3"
    assert decide(S, 3, 3, Load(250), 5).reason.startswith("steady at 3")      # no change: not a cooldown hold
    assert decide(Scaling(min=1, max=5, p99_ms=200), 2, 2, Load(50, 150), 0).reason == \
        "steady at 2: no figure says otherwise"


def test_targets_below_one_and_thresholds_at_the_edge():
    assert decide(Scaling(min=1, max=10, rps=0.5), 1, 1, Load(3), 0).replicas == 3      # needs 6, step 2
    assert decide(Scaling(min=1, max=10, rps=100), 2, 2, Load(150, 900), 0).replicas == 2  # no p99 target
    assert decide(Scaling(min=1, max=10, p99_ms=200), 2, 2, Load(50, 200), 0).replicas == 2  # at it, not above
    assert decide(Scaling(min=1, max=10, p99_ms=200), 2, 2, Load(50, 100), 99).replicas == 2  # half: not below half
    assert decide(Scaling(min=1, max=10, p99_ms=200, step=2), 3, 3, Load(50, 50), 99).replicas == 2   # one at a time
    with_rate = Scaling(min=1, max=10, rps=1, p99_ms=200)
    assert decide(with_rate, 3, 3, Load(3, 50), 99).replicas == 3     # the rate target decides the way down


def test_the_label_bounds_are_inclusive_and_errors_name_the_value_the_rule_and_an_example():
    assert parse_scale_label("min=0,max=1000,window=2,cooldown=86400") == \
        Scaling(min=0, max=1000, window=2, cooldown=86400)
    assert parse_scale_label("min=3,max=3").max == 3
    with pytest.raises(InvalidValue) as exc:
        parse_scale_label("max=1001")
    assert (exc.value.field, exc.value.value, exc.value.rule) == \
        ("scale.max", 1001, "a whole number of replicas from 1 to 1000, at least min")
    with pytest.raises(InvalidValue) as exc:
        parse_scale_label("min=4,max=2")
    assert (exc.value.value, exc.value.rule) == (2, "a whole number of replicas from 1 to 1000, at least min")
    with pytest.raises(InvalidValue) as exc:
        parse_scale_label("speed=3")
    assert exc.value.value == "speed=3" and "(for example min=1,max=5,rps=50)" in exc.value.rule
    with pytest.raises(InvalidValue) as exc:
        parse_scale_label("rps=fast")
    assert (exc.value.field, exc.value.value) == ("scale.rps", "fast")


def test_the_analysis_label_names_its_setting_too():
    from catalog.validation import parse_analysis_label
    with pytest.raises(InvalidValue) as exc:
        parse_analysis_label("step=x")
    assert (exc.value.field, exc.value.value) == ("analysis.step", "x")
