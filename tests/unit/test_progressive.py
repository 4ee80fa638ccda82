"""Progressive mode carried out (gatekeeper.promotion.progressive): when a canary's analysis
starts, when it is judged, what it asks of the routing policy, and what it records; on
in-memory stores shaped like catalog.stores (the analysis kept as the JSON Consul holds).
The decisions themselves are tests/unit/test_analysis.py; the promoter wired to it is
tests/unit/test_promotion.py; real Prometheus: tests/e2e/test_progressive.py."""
from __future__ import annotations

import time
from dataclasses import asdict, replace

import pytest

from catalog.model import (PROGRESSIVE, ROLLED_BACK, RUNNING, Analysis, AnalysisState, Instance, RegisteredInstance,
                           RoutingPolicy)
from catalog.validation import InvalidValue
from gatekeeper.prometheus import MetricsUnavailable
from gatekeeper.promotion.analysis import Measurement
from gatekeeper.promotion.progressive import Progressive

SETTINGS = Analysis(step=20, max_weight=60, interval=5, threshold=2, min_requests=10)
GOOD, BAD, STABLE = Measurement(100, 100.0, 20.0), Measurement(100, 95.0, 20.0), Measurement(900, 100.0, 15.0)
DOWN = MetricsUnavailable("Prometheus at http://p: ConnectionError")


class Analyses:
    """The analysis store: one record per service, kept as JSON as in Consul KV."""

    def __init__(self):
        self.raw = {}

    def get(self, service):
        raw = self.raw.get(service)
        return AnalysisState.from_json(raw) if raw else None

    def put(self, state):
        self.raw[state.service] = state.to_json()


class Policies:
    def __init__(self, store):
        self.store = store

    def get(self, service):
        if self.store.broken:
            raise InvalidValue("weight", 500, "a whole number from 0 to 100")
        return 7, self.store.policies_by_service.get(service)


class History(list):
    def add(self, service, event, **details):
        self.append((service, event, details))

    def of(self, event):
        return [d for _, e, d in self if e == event]


class Stores:
    """The stores Progressive takes: routing policies, analyses, history."""

    def __init__(self, pol=None):
        self.policies_by_service = {"demo": pol} if pol else {}
        self.broken = False
        self.policies, self.analysis, self.history = Policies(self), Analyses(), History()

    @property
    def pol(self):
        return self.policies_by_service["demo"]

    @pol.setter
    def pol(self, value):
        self.policies_by_service["demo"] = value


class Routing:
    """The policy changes an analysis asks for (the promoter's, in production): each call is
    recorded and applied to the stored policy, unless `refuse` (an operator changed it first)."""

    def __init__(self, stores):
        self.stores, self.calls, self.refuse = stores, [], False

    def _apply(self, call, **changes):
        self.calls.append(call)
        if self.refuse:
            return False
        self.stores.pol = replace(self.stores.pol, **changes)
        return True

    def set_weight(self, service, version, weight):
        return self._apply(("weight", service, version, weight), weight=weight)

    def promote(self, service, version):
        return self._apply(("promote", service, version), stable=version, canary="", weight=0,
                           previous=self.stores.pol.stable)

    def roll_back(self, service, version, reason, instances):
        return self._apply(("roll back", service, version, reason, [ri.instance.id for ri in instances]),
                           canary="", weight=0, aborted=version)


class Prometheus:
    """Answers each version's queued measurement (or raises it); records what was asked."""

    def __init__(self, **answers):
        self.answers = {"v1": STABLE, "v2": GOOD, **answers}
        self.asked = []

    def measure(self, service, version, window):
        self.asked.append((service, version, window))
        answer = self.answers[version]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def reg(version, n=1):
    i = Instance(id=f"h:{version}-{n}:8080", service="demo", address="127.0.0.1", port=30000 + n, version=version,
                 container_id=f"c-{version}-{n}", container_name=f"{version}-{n}", image=f"demo:{version}",
                 registered_by="r")
    return RegisteredInstance(i, {i.gate_check_id: "passing"})


REGISTERED = [reg("v1"), reg("v2", 1), reg("v2", 2)]


def canary_policy(**kw):
    return RoutingPolicy(**{"service": "demo", "stable": "v1", "canary": "v2", "weight": 0, "mode": PROGRESSIVE,
                            "analysis": SETTINGS, **kw})


def setup(pol=None, prometheus="default", t=1000.0):
    """v2 the canary of demo in progressive mode (stable v1), nothing judged yet."""
    stores = Stores(pol or canary_policy())
    clock = Clock(t)
    prom = Prometheus() if prometheus == "default" else prometheus
    routing = Routing(stores)
    p = Progressive(stores, prom, routing.set_weight, routing.promote, routing.roll_back, clock=clock)
    return p, stores, routing, prom, clock


def due_in(p, seconds):
    """next_due() is time.monotonic() plus `seconds` (read between two readings of the clock)."""
    before = time.monotonic()
    due = p.next_due()
    after = time.monotonic()
    assert due is not None and before + seconds <= due <= after + seconds, (due - before, seconds)


def started(p, stores, routing, prom, clock):
    p.tick("demo", REGISTERED)
    routing.calls.clear()
    return stores.analysis.get("demo")


# --- starting an analysis -----------------------------------------------------------------------

def test_a_progressive_canary_without_an_analysis_starts_one_at_the_first_step_and_is_moved_there():
    p, stores, routing, prom, clock = setup()
    assert p.next_due() is None                          # nothing running yet
    p.tick("demo", REGISTERED)
    state = stores.analysis.get("demo")
    assert (state.service, state.version, state.weight, state.status) == ("demo", "v2", 20, RUNNING)
    assert (state.started, state.next_check, state.failed, state.checks) == (1000.0, 1005.0, 0, [])
    assert routing.calls == [("weight", "demo", "v2", 20)] and stores.pol.weight == 20
    assert stores.history == [("demo", "analysis started", {"version": "v2", "weight": 20,
                                                            "settings": asdict(SETTINGS)})]
    assert prom.asked == []                              # nothing judged at the start
    due_in(p, 5.0)


def test_a_canary_already_at_the_first_step_is_not_written_again():
    p, stores, routing, prom, clock = setup(canary_policy(weight=20))
    p.tick("demo", REGISTERED)
    assert stores.analysis.get("demo").weight == 20 and routing.calls == []


def test_a_new_canary_supersedes_the_running_analysis_of_the_old_one_and_says_at_which_weight():
    p, stores, routing, prom, clock = setup()
    started(p, stores, routing, prom, clock)
    clock.t = 1005.0
    p.tick("demo", REGISTERED)                           # v2 passes: 40 %
    assert stores.analysis.get("demo").weight == 40
    stores.pol = replace(stores.pol, canary="v3", weight=0)   # `gatekeeper canary demo v3`, say
    clock.t = 1007.0
    p.tick("demo", REGISTERED)
    state = stores.analysis.get("demo")
    assert (state.version, state.weight, state.status, state.next_check) == ("v3", 20, RUNNING, 1012.0)
    assert ("demo", "analysis superseded", {"version": "v2", "by": "v3", "weight": 40}) in stores.history
    assert stores.history[-1][:2] == ("demo", "analysis started") and stores.history[-1][2]["version"] == "v3"
    assert routing.calls[-1] == ("weight", "demo", "v3", 20)


def test_an_analysis_that_ended_is_not_superseded_but_a_new_one_starts():
    p, stores, routing, prom, clock = setup()
    ended = replace(started(p, stores, routing, prom, clock), status=ROLLED_BACK, weight=0)
    stores.analysis.put(ended)
    p.begin("demo", "v2", stores.pol)                    # the same version tried again
    assert [e for _, e, _ in stores.history] == ["analysis started", "analysis started"]
    assert stores.analysis.get("demo").status == RUNNING


# --- when a check is due -------------------------------------------------------------------------

def test_the_canary_is_judged_once_its_interval_has_passed_and_not_before():
    p, stores, routing, prom, clock = setup()
    started(p, stores, routing, prom, clock)
    clock.t = 1004.9
    p.tick("demo", REGISTERED)
    assert prom.asked == [] and stores.history.of("analysis") == []
    due_in(p, 0.1)
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    assert prom.asked == [("demo", "v2", 5), ("demo", "v1", 5)]     # the canary, then the stable, over the interval
    assert len(stores.history.of("analysis")) == 1


def test_a_new_leader_resumes_the_stored_analysis_and_its_schedule():
    p, stores, routing, prom, clock = setup()
    started(p, stores, routing, prom, clock)
    clock.t = 1002.0
    successor = Progressive(stores, prom, routing.set_weight, routing.promote, routing.roll_back, clock=clock)
    successor.tick("demo", REGISTERED)
    assert routing.calls == [] and [e for _, e, _ in stores.history].count("analysis started") == 1
    due_in(successor, 3.0)
    clock.t = 1005.0
    successor.tick("demo", REGISTERED)
    assert routing.calls == [("weight", "demo", "v2", 40)]


def test_next_due_is_the_earliest_service_and_never_in_the_past():
    p, stores, routing, prom, clock = setup()
    p.due = {"demo": 1005.0, "other": 1003.0}
    due_in(p, 3.0)
    clock.t = 1010.0                                     # both overdue: at once, not earlier
    due_in(p, 0.0)


# --- what a check does ---------------------------------------------------------------------------

def test_a_passed_check_steps_up_and_records_the_figures_of_both_versions():
    p, stores, routing, prom, clock = setup()
    started(p, stores, routing, prom, clock)
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    assert routing.calls == [("weight", "demo", "v2", 40)] and stores.pol.weight == 40
    state = stores.analysis.get("demo")
    assert (state.weight, state.next_check, state.failed, len(state.checks)) == (40, 1010.0, 0, 1)
    assert stores.history[-1] == ("demo", "analysis", {
        "version": "v2", "result": "pass", "weight": 20,
        "reason": "100 requests, success 100.0 %, p99 20 ms: 20 % -> 40 %",
        "canary": {"requests": 100, "success_rate": 100.0, "p99_ms": 20.0},
        "stable": {"requests": 900, "success_rate": 100.0, "p99_ms": 15.0}})
    due_in(p, 5.0)


def test_a_pass_at_the_last_step_promotes_the_canary():
    p, stores, routing, prom, clock = setup()
    started(p, stores, routing, prom, clock)
    for t in (1005.0, 1010.0, 1015.0):
        clock.t = t
        p.tick("demo", REGISTERED)
    assert routing.calls == [("weight", "demo", "v2", 40), ("weight", "demo", "v2", 60), ("promote", "demo", "v2")]
    assert (stores.pol.stable, stores.pol.canary) == ("v2", "")
    assert stores.analysis.get("demo").status == "promoted"
    clock.t = 1020.0
    p.tick("demo", REGISTERED)                           # no canary any more: nothing is due
    assert p.next_due() is None and len(stores.history.of("analysis")) == 3


def test_failed_checks_hold_then_roll_back_the_canarys_instances_only():
    p, stores, routing, prom, clock = setup(prometheus=Prometheus(v2=BAD))
    started(p, stores, routing, prom, clock)
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    assert routing.calls == [] and stores.analysis.get("demo").failed == 1
    clock.t = 1010.0
    p.tick("demo", REGISTERED)
    reason = "rolled back at 20 %: success rate 95.0 % < 99 % (2 failed checks of 2)"
    assert routing.calls == [("roll back", "demo", "v2", reason, ["h:v2-1:8080", "h:v2-2:8080"])]
    state = stores.analysis.get("demo")
    assert (state.status, state.weight, state.reason) == (ROLLED_BACK, 0, reason)
    assert [(d["result"], d["weight"]) for d in stores.history.of("analysis")] == [("fail", 20), ("fail", 20)]
    assert stores.history[-1][2]["reason"] == reason


def test_a_step_the_operator_beat_changes_nothing_and_the_canary_is_judged_again_next_interval():
    p, stores, routing, prom, clock = setup()
    before = started(p, stores, routing, prom, clock)
    routing.refuse = True                                # the policy changed under the analysis
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    assert routing.calls == [("weight", "demo", "v2", 40)]
    state = stores.analysis.get("demo")
    assert state == replace(before, next_check=1010.0)   # same weight, checks, status; only later
    assert stores.history.of("analysis")[-1]["result"] == "pass"      # the check itself is still recorded
    due_in(p, 5.0)
    routing.refuse = False
    clock.t = 1010.0
    p.tick("demo", REGISTERED)
    assert stores.pol.weight == 40 and stores.analysis.get("demo").weight == 40


@pytest.mark.parametrize("answers, settings, asked", [
    ({}, replace(SETTINGS, step=60), "promote"),                     # a pass at max_weight
    ({"v2": BAD}, replace(SETTINGS, threshold=1), "roll back"),      # the thresholdth failure
])
def test_a_refused_promotion_or_roll_back_keeps_the_analysis_running(answers, settings, asked):
    p, stores, routing, prom, clock = setup(canary_policy(analysis=settings), prometheus=Prometheus(**answers))
    before = started(p, stores, routing, prom, clock)
    routing.refuse = True
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    assert [c[0] for c in routing.calls] == [asked]
    assert stores.analysis.get("demo") == replace(before, next_check=1010.0)
    assert stores.analysis.get("demo").status == RUNNING


# --- no evidence: the weight holds and history says why --------------------------------------------

def test_unreadable_canary_metrics_hold_the_weight_and_history_names_the_error_without_figures():
    p, stores, routing, prom, clock = setup(canary_policy(stable=""), prometheus=Prometheus(v2=DOWN))
    started(p, stores, routing, prom, clock)
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    assert prom.asked == [("demo", "v2", 5)]            # no stable version: nothing else asked
    assert routing.calls == []
    assert stores.history[-1] == ("demo", "analysis", {
        "version": "v2", "result": "inconclusive", "weight": 20,
        "reason": "metrics unavailable (Prometheus at http://p: ConnectionError); holding at 20 %"})
    state = stores.analysis.get("demo")
    assert (state.weight, state.failed, state.next_check) == (20, 0, 1010.0)


def test_unreadable_stable_metrics_do_not_stop_the_canarys_check():
    p, stores, routing, prom, clock = setup(prometheus=Prometheus(v1=DOWN))
    started(p, stores, routing, prom, clock)
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    check = stores.history.of("analysis")[-1]
    assert check["result"] == "pass" and "stable" not in check and check["canary"]["requests"] == 100
    assert routing.calls == [("weight", "demo", "v2", 40)]


def test_without_prometheus_the_canary_holds_and_history_says_gatekeeper_needs_it():
    p, stores, routing, prom, clock = setup(prometheus=None)
    started(p, stores, routing, prom, clock)
    clock.t = 1005.0
    p.tick("demo", REGISTERED)
    assert routing.calls == [] and stores.pol.weight == 20
    check = stores.history.of("analysis")[-1]
    assert check["reason"] == "metrics unavailable (gatekeeper runs without --prometheus); holding at 20 %"
    assert "canary" not in check and "stable" not in check


# --- when there is nothing to judge ---------------------------------------------------------------

def test_leaving_progressive_mode_or_losing_the_canary_stops_the_checks():
    for change in ({"mode": "manual"}, {"canary": "", "weight": 0}):
        p, stores, routing, prom, clock = setup()
        started(p, stores, routing, prom, clock)
        stores.pol = replace(stores.pol, **change)
        clock.t = 1005.0
        p.tick("demo", REGISTERED)
        assert p.next_due() is None and prom.asked == [] and routing.calls == []


def test_an_invalid_or_missing_policy_is_left_alone():
    p, stores, routing, prom, clock = setup()
    stores.broken = True
    p.tick("demo", REGISTERED)
    stores.broken = False
    p.tick("other", REGISTERED)                          # no policy at all
    assert stores.analysis.raw == {} and stores.history == [] and routing.calls == []
