"""Routing-policy decisions with in-memory stores, the policy store doing check-and-set as Consul
does. The same commands run against the real stack in tests/e2e/test_promotion.py."""
from __future__ import annotations

import time

import pytest

from catalog.model import AUTO, MANUAL, PASSED, Instance, RegisteredInstance, RoutingPolicy, Verdict
from catalog.validation import InvalidValue
from gatekeeper.promotion import promoter as pr
from gatekeeper.reconciler import run_pass


class Policies:
    """The policy store, with check-and-set as Consul does it, over the bundle's `pol` and `index`."""

    def __init__(self, store):
        self.store = store

    def get(self, service):
        assert service == "demo", service          # every call names the service it is about
        return self.store.index, self.store.pol

    def put(self, policy, cas):
        store = self.store
        assert policy.service == "demo" and isinstance(policy.updated, float) and policy.updated > 0
        store.writes += 1
        if store.race:
            store.race -= 1
            store.index += 1
            return False
        if cas != store.index:
            return False
        store.pol, store.index = policy, store.index + 1
        return True

    def rollback(self, service):
        assert service == "demo", service
        return self.store.rollback_index, self.store.waiting

    def put_rollback(self, service, request, cas):
        assert service == "demo", service
        if cas != self.store.rollback_index:
            return False
        self.store.waiting, self.store.rollback_index = request, self.store.rollback_index + 1
        return True

    def rollbacks_waiting(self):
        return ["demo"] if self.store.waiting else []

    def clear_rollback(self, service, cas=None):
        if cas is not None and cas != self.store.rollback_index:
            return False
        self.store.waiting, self.store.rollback_index = None, self.store.rollback_index + 1
        return True


class Instances:
    def __init__(self, store):
        self.store = store

    def of(self, service):
        assert service == "demo", service
        return list(self.store.registered)


class History:
    def __init__(self, store):
        self.store = store

    def add(self, service, event, **details):
        assert service == "demo", service
        self.store.hist.append((event, details))

    def of(self, service):
        assert service == "demo", service
        return [{"event": event, **details} for event, details in self.store.hist]


class Proxies:
    """Every proxy serves what the policy says (none lags): a drain waits only its period."""

    def lagging(self, service, role, version, proxies=None):
        return []

    def wait_served(self, index, wait):
        return index + 1


class Verdicts:
    def get(self, iid):
        return Verdict(iid, "c-" + iid, "t", PASSED, "ok", 1, 2)


class NodeRecords:
    def __init__(self, store):
        self.store = store

    def request_action(self, inst, action, reason, timeout=10):
        self.store.actions.append((inst.container_id, action))

    def request_stopped(self, node, instance_id, container_id, started, action, reason):
        self.store.actions.append((container_id, action, node, instance_id, started, reason))


class Store:
    """The stores promotion takes, in memory: the policy (`pol`, at `index`), the history
    (`hist`), the registered instances, and the container actions asked."""

    def __init__(self, policy=None, versions=(), admitted=True):
        self.pol, self.index, self.hist = policy, 1 if policy else 0, []
        self.registered = [reg(v, admitted) for v in versions]
        self.writes = 0
        self.race = 0               # this many writes lose their check-and-set first
        self.actions = []           # (container id, action) asked of the container's host
        self.waiting, self.rollback_index = None, 0     # a rollback waiting for drained containers
        self.policies, self.instances, self.history = Policies(self), Instances(self), History(self)
        self.verdicts, self.node_records, self.proxies = Verdicts(), NodeRecords(self), Proxies()


def broken():
    """A store whose policy fails validation."""
    store = Store()

    def get(service):
        raise InvalidValue("weight", 500, "0 to 100")
    store.policies.get = get
    return store


def inst(version, n=1):
    return Instance(id=f"h:{version}-{n}:8080", service="demo", address="127.0.0.1", port=30000 + n,
                    version=version, container_id=f"c-h:{version}-{n}:8080", container_name=f"{version}-{n}",
                    image=f"demo:{version}", registered_by="r")


def reg(version, admitted=True):
    i = inst(version)
    return RegisteredInstance(i, {i.gate_check_id: "passing" if admitted else "critical"})


def policy(**kw):
    return RoutingPolicy(service="demo", **kw)


# --- automatic promotion on a pass ------------------------------------------------------------

def test_the_first_pass_creates_the_policy_with_that_version_stable():
    store = Store()
    pr.Promoter(store).admitted(inst("v1"))
    assert (store.pol.stable, store.pol.canary, store.pol.mode, store.pol.previous) == ("v1", "", AUTO, "")
    assert store.hist == [("promoted", {"version": "v1", "previous": "", "by": "gatekeeper (auto)"})]


def test_auto_mode_makes_a_new_version_stable_and_remembers_the_old_one():
    store = Store(policy(stable="v1"))
    pr.Promoter(store).admitted(inst("v2"))
    assert (store.pol.stable, store.pol.previous) == ("v2", "v1")
    assert store.hist[-1] == ("promoted", {"version": "v2", "previous": "v1", "by": "gatekeeper (auto)"})


def test_manual_mode_makes_a_new_version_the_canary_at_zero():
    store = Store(policy(stable="v1", mode=MANUAL))
    pr.Promoter(store).admitted(inst("v2"))
    assert (store.pol.stable, store.pol.canary, store.pol.weight) == ("v1", "v2", 0)
    assert store.hist == [("canary", {"version": "v2", "by": "gatekeeper"})]


def test_manual_mode_without_a_stable_version_makes_the_first_one_stable():
    store = Store(policy(mode=MANUAL))
    pr.Promoter(store).admitted(inst("v1"))
    assert (store.pol.stable, store.pol.canary) == ("v1", "")


@pytest.mark.parametrize("existing", [policy(stable="v1"), policy(stable="v0", canary="v1", mode=MANUAL)])
def test_another_instance_of_a_routed_version_changes_nothing(existing):
    store = Store(existing)
    pr.Promoter(store).admitted(inst("v1"))
    assert store.pol == existing and store.hist == [] and store.writes == 0


def test_a_canary_that_was_aborted_and_passes_again_is_no_longer_marked_aborted():
    store = Store(policy(stable="v1", mode=MANUAL, aborted="v2"))
    pr.Promoter(store).admitted(inst("v2"))
    assert (store.pol.canary, store.pol.aborted) == ("v2", "")


def test_an_invalid_policy_is_left_alone():
    store = broken()
    pr.Promoter(store).admitted(inst("v1"))
    assert store.writes == 0 and store.hist == []


def test_a_lost_check_and_set_is_retried_and_a_lasting_race_is_a_conflict():
    store = Store(policy(stable="v1"))
    store.race = 2
    pr.Promoter(store).admitted(inst("v2"))
    assert store.pol.stable == "v2" and store.writes == 3
    store.race = 5
    with pytest.raises(pr.Conflict, match="kept changing"):
        pr.update_policy(store.policies, "demo", lambda p: pr.replace(p, weight=10))


# --- operator commands -------------------------------------------------------------------------

def test_promote_steps_through_25_and_50_then_makes_the_canary_stable():
    store = Store(policy(stable="v1", canary="v2", mode=MANUAL), versions=("v1", "v2"))
    p, msg = pr.promote(store, "demo")
    assert p.weight == 25 and "v2 now takes 25%" in msg
    assert store.hist[-1] == ("weight", {"version": "v2", "weight": 25, "by": "operator (promote)"})
    assert pr.promote(store, "demo")[0].weight == 50
    p, msg = pr.promote(store, "demo")
    assert (p.stable, p.canary, p.weight, p.previous) == ("v2", "", 0, "v1")
    assert "v2 is now stable" in msg and "v1 is kept as the rollback target" in msg
    assert store.hist[-1] == ("promoted", {"version": "v2", "previous": "v1", "by": "operator"})


def test_promote_full_and_promote_without_a_canary():
    store = Store(policy(stable="v1", canary="v2", weight=25))
    assert pr.promote(store, "demo", full=True)[0].stable == "v2"
    with pytest.raises(pr.PromotionError, match="no canary to promote \\(stable is v2\\)"):
        pr.promote(store, "demo")
    with pytest.raises(pr.PromotionError, match="unknown service 'demo'"):
        pr.promote(Store(), "demo")


def test_weight_is_bounded_and_needs_a_canary():
    store = Store(policy(stable="v1", canary="v2"))
    for bad in (-1, 101):
        with pytest.raises(InvalidValue, match="0 to 100"):
            pr.set_weight(store, "demo", bad)
    for ok in (0, 100):
        assert pr.set_weight(store, "demo", ok)[0].weight == ok
    p, msg = pr.set_weight(store, "demo", 20)
    assert p.weight == 20 and msg == "demo: canary v2 takes 20% of traffic, stable v1 the rest"
    assert store.hist[-1] == ("weight", {"version": "v2", "weight": 20, "by": "operator"})
    with pytest.raises(pr.PromotionError, match="has no canary"):
        pr.set_weight(Store(policy(stable="v1")), "demo", 10)


def test_abort_takes_the_canary_out_and_records_why():
    store = Store(policy(stable="v1", canary="v2", weight=30))
    p, msg = pr.abort(store, "demo", why="p99 too high", by="someone")
    assert (p.canary, p.weight, p.aborted, p.stable) == ("", 0, "v2", "v1")
    assert "canary v2 aborted (p99 too high)" in msg and "stable v1 serves all traffic" in msg
    assert store.hist[-1] == ("aborted", {"version": "v2", "by": "someone", "reason": "p99 too high"})
    with pytest.raises(pr.PromotionError, match="no canary to abort"):
        pr.abort(store, "demo")


def test_rollback_needs_a_previous_version_that_still_has_an_admitted_instance():
    with pytest.raises(pr.PromotionError, match="no previous stable version"):
        pr.rollback(Store(policy(stable="v2")), "demo")
    with pytest.raises(pr.PromotionError, match="cannot roll demo back to v1: it has no admitted instance"):
        pr.rollback(Store(policy(stable="v2", previous="v1"), versions=("v2", "v1"), admitted=False), "demo")
    store = Store(policy(stable="v2", previous="v1", canary="v3", weight=10), versions=("v1", "v2"))
    p, msg = pr.rollback(store, "demo")
    assert (p.stable, p.previous, p.canary, p.weight) == ("v1", "v2", "", 0)
    assert msg == "demo: rolled back to v1; v2 gets no more traffic"
    assert store.hist[-1] == ("rolled back", {"version": "v1", "previous": "v2", "by": "operator"})


def test_mode_is_validated_and_needs_a_known_service():
    with pytest.raises(InvalidValue, match="'auto', 'manual' or 'progressive'"):
        pr.set_mode(Store(policy(stable="v1")), "demo", "sometimes")
    with pytest.raises(pr.PromotionError, match="unknown service 'demo'"):
        pr.set_mode(Store(), "demo", MANUAL)
    store = Store(versions=("v1",))                 # instances but no policy yet: allowed
    p, msg = pr.set_mode(store, "demo", MANUAL)
    assert p.mode == MANUAL and "becomes a canary at 0%" in msg
    assert store.hist[-1] == ("mode", {"mode": MANUAL, "by": "operator"})
    assert "becomes stable at once" in pr.set_mode(store, "demo", AUTO)[1]


def test_an_invalid_policy_is_refused_with_the_key_to_fix():
    with pytest.raises(pr.PromotionError, match="fix or delete gatekeeper/policies/demo"):
        pr.promote(broken(), "demo")


# --- stopping old versions after a promotion ---------------------------------------------------

def test_drain_stops_old_passed_versions_only_and_never_the_routed_ones():
    store = Store(policy(stable="v2", canary="v3", previous="v1"), versions=("v1", "v2", "v3"))
    p = pr.Promoter(store, drain_seconds=0)
    old = {ri.instance.container_id for ri in store.registered}
    p._stop_old("demo", "v2", old)
    assert store.actions == [(inst("v1").container_id, "stop")]
    # and says which containers it stopped, for a rollback to start them again
    v1 = inst("v1")
    assert store.hist == [("drained", {"version": "v1", "stable": "v2", "by": "gatekeeper", "containers": [
        {"name": "v1-1", "node": v1.node, "id": v1.container_id, "started": v1.started, "instance": v1.id}]})]


def drained_store(**policy_kw):
    """v2 stable and serving; v1's containers stopped by the drain, as its history event names them."""
    store = Store(policy(stable="v2", previous="v1", **policy_kw), versions=("v2",))
    store.hist.append(("drained", {"version": "v1", "stable": "v2", "by": "gatekeeper", "containers": [
        {"name": "web-a", "node": "h1", "id": "c-a", "started": "t-a", "instance": "h1:web-a:8080"},
        {"name": "web-b", "node": "h2", "id": "c-b", "started": "t-b", "instance": "h2:web-b:8080"}]}))
    return store


def test_a_rollback_to_a_drained_version_asks_the_leader_to_start_its_containers():
    store = drained_store()
    p, msg = pr.rollback(store, "demo")
    assert p.stable == "v2"                          # nothing served changes until v1 passes again
    assert msg == ("demo: rolling back to v1: the drain stopped its containers; gatekeeper asks their hosts to "
                   "start them (web-a on h1, web-b on h2); once one of them passes its tests again, v1 is stable "
                   "and v2 gets no more traffic (`gatekeeper status demo` shows how far it got; it gives up after "
                   "600 s and says why)")
    w = store.waiting
    assert (w.version, w.replacing, w.by, w.started) == ("v1", "v2", "operator", False)
    assert w.deadline - w.asked == pr.ROLLBACK_PATIENCE
    assert store.hist[-1] == ("rollback asked", {"version": "v1", "previous": "v2", "by": "operator", "containers": [
        {"name": "web-a", "node": "h1"}, {"name": "web-b", "node": "h2"}]})
    again = pr.rollback(store, "demo")[1]            # asked twice: the one under way is kept
    assert again.startswith("demo: the rollback to v1 is under way already") and store.waiting == w

    leader = pr.Promoter(store)
    leader.reconcile("demo", store.registered)       # the leader asks each container's own host, once
    assert store.actions == [("c-a", "start", "h1", "h1:web-a:8080", "t-a", "rollback of demo to v1"),
                             ("c-b", "start", "h2", "h2:web-b:8080", "t-b", "rollback of demo to v1")]
    assert store.waiting.started and store.pol.stable == "v2"
    leader.reconcile("demo", store.registered)
    assert len(store.actions) == 2 and leader.next_due() is not None

    leader.admitted(inst("v1"))                      # web-a started and passed its tests again
    assert (store.pol.stable, store.pol.previous, store.pol.canary) == ("v1", "v2", "")
    assert store.hist[-1] == ("rolled back", {"version": "v1", "previous": "v2", "by": "operator",
                                              "started": ["web-a", "web-b"]})
    assert store.waiting is None
    leader.reconcile("demo", store.registered)
    assert leader.next_due() is None

    store.waiting = w                                # its clearing had failed: found again by a pass
    leader.admitted(inst("v1"))
    leader.reconcile("demo", store.registered)
    assert store.waiting is None and [e for e, _ in store.hist].count("rolled back") == 1, "recorded once"


@pytest.mark.parametrize("mode", [MANUAL, "progressive"])
def test_in_manual_and_progressive_mode_too_the_passed_drained_version_is_stable_not_a_canary(mode):
    store = drained_store(mode=mode)
    pr.rollback(store, "demo")
    pr.Promoter(store).admitted(inst("v1"))
    assert (store.pol.stable, store.pol.canary, store.pol.weight) == ("v1", "", 0)


def test_a_waiting_rollback_is_given_up_at_its_deadline_or_when_another_version_became_stable():
    store = drained_store()
    pr.rollback(store, "demo")
    store.waiting = pr.replace(store.waiting, deadline=store.waiting.asked)      # nothing passed in time
    pr.Promoter(store).reconcile("demo", store.registered)
    assert store.waiting is None and store.pol.stable == "v2"
    assert store.hist[-1] == ("rollback given up", {"version": "v1", "by": "gatekeeper", "reason": (
        "no instance of v1 passed its tests within 0 s of the request (`gatekeeper why demo` says why)")})

    store = drained_store()
    pr.rollback(store, "demo")
    pr.Promoter(store).admitted(inst("v3"))          # a new deploy wins meanwhile (auto mode)
    assert store.pol.stable == "v3"
    pr.Promoter(store).reconcile("demo", store.registered)
    assert store.waiting is None
    assert store.hist[-1] == ("rollback given up", {"version": "v1", "by": "gatekeeper",
                                                    "reason": "v3 became stable meanwhile"})
    pr.Promoter(store).admitted(inst("v1"))          # v1 passing later is an ordinary new pass
    assert store.pol.stable == "v1" and store.hist[-1][0] == "promoted"

    store = drained_store()
    pr.rollback(store, "demo")
    pr.Promoter(store).admitted(inst("v3"))
    pr.Promoter(store).admitted(inst("v1"))          # v1 passes before the leader saw v3 win
    assert store.pol.stable == "v3", "the old version is not promoted over the newer one"
    assert store.waiting is None and store.hist[-1] == ("rollback given up", {
        "version": "v1", "by": "gatekeeper", "reason": "v3 became stable meanwhile"})


def test_a_rollback_to_a_drain_recorded_without_container_ids_says_which_containers_to_start_and_where():
    store = Store(policy(stable="v2", previous="v1"), versions=("v2",))
    store.hist.append(("drained", {"version": "v1", "stable": "v2", "by": "gatekeeper", "containers": [
        {"name": "web-b", "node": "h2"}, {"name": "web-a", "node": "h1"}, {"name": "web-c", "node": "h1"}]}))
    with pytest.raises(pr.PromotionError) as err:
        pr.rollback(store, "demo")
    assert str(err.value) == (
        "cannot roll demo back to v1: it has no admitted instance. Its containers were stopped after the drain, "
        "not removed: start them again (`docker start web-a web-c` on host h1; `docker start web-b` on host h2); "
        "once they pass their tests again, v1 is stable again by itself in auto mode; in manual or progressive "
        "mode run `gatekeeper rollback demo` again. (`gatekeeper run --keep-old` keeps old versions running, "
        "ready for an instant rollback.)")
    store.hist.clear()                               # nothing drained on record: deploy it again
    with pytest.raises(pr.PromotionError, match=r"Deploy v1 again \(`docker run` its image"):
        pr.rollback(store, "demo")


def test_drain_does_nothing_when_promoted_again_meanwhile_or_when_keeping_old():
    store = Store(policy(stable="v3"), versions=("v1", "v2", "v3"))
    pr.Promoter(store)._stop_old("demo", "v2", {inst("v1").container_id})
    assert store.actions == []
    keep = pr.Promoter(store, stop_old=False)
    keep.drain_later("demo", "v3")                   # returns at once: no timer, nothing stopped
    assert store.actions == []


def test_the_exact_refusals_and_answers_an_operator_reads():
    def refusal(fn, *args):
        with pytest.raises((pr.PromotionError, InvalidValue)) as err:
            fn(*args)
        return str(err.value)
    assert refusal(pr.promote, Store(), "demo") == ("unknown service 'demo': it has no routing policy yet "
                                                     "(a service gets one when its first instance passes its tests)")
    assert refusal(pr.promote, Store(policy(stable="v1")), "demo") == (
        "demo has no canary to promote (stable is v1); a canary appears when a new version passes its tests in "
        "manual mode")
    assert "(stable is not set)" in refusal(pr.promote, Store(policy(mode=MANUAL)), "demo")
    assert refusal(pr.set_weight, Store(policy(stable="v1")), "demo", 101) == \
        "weight=101 is invalid: a whole number from 0 to 100"
    assert refusal(pr.set_mode, Store(policy(stable="v1")), "demo", "x") == "mode='x' is invalid: 'auto', 'manual' or 'progressive'"
    assert refusal(pr.rollback, Store(policy(stable="v2", previous="v1")), "demo") == (
        "cannot roll demo back to v1: it has no admitted instance. Deploy v1 again (`docker run` its image with "
        "the service's labels, or `docker service update --image` for a Swarm service); once they pass their "
        "tests again, v1 is stable again by itself in auto mode; in manual or progressive mode run `gatekeeper "
        "rollback demo` again. (`gatekeeper run --keep-old` keeps old versions running, ready for an instant "
        "rollback.)")
    assert refusal(pr.try_canary, Store(policy(stable="v1"), versions=("v1",)), "demo", "v2") == (
        "demo v2 has no admitted instance (`gatekeeper why demo` says why); deploy it, or `gatekeeper retest` "
        "its instances first")
    store = Store(policy(stable="v1", canary="v2", weight=10), versions=("v1", "v2"))
    assert pr.abort(store, "demo")[1] == ("demo: canary v2 aborted; stable v1 serves all traffic. v2's instances "
                                          "keep running but get no requests")
    assert store.hist[-1] == ("aborted", {"version": "v2", "by": "operator"})
    _, msg = pr.try_canary(store, "demo", "v2")
    assert msg == ("demo: v2 is the canary at 0% (requests with X-Canary: always reach it); "
                   "`gatekeeper weight demo N` or `promote` to move it on")
    assert store.hist[-1] == ("canary", {"version": "v2", "by": "operator", "was": "aborted"})
    writes = store.writes
    pr.try_canary(store, "demo", "v2")                  # already the canary: no write, no "was"
    assert store.writes == writes and store.hist[-1] == ("canary", {"version": "v2", "by": "operator"})
    p, msg = pr.promote(Store(policy(canary="v2", weight=50)), "demo")
    assert msg == "demo: v2 is now stable and takes all traffic (nothing is kept as the rollback target)"
    assert pr.set_mode(Store(versions=("v1",)), "demo", AUTO)[1] == (
        "demo: mode auto: a new version that passes becomes stable at once and old ones drain")
    assert pr.set_mode(Store(versions=("v1",)), "demo", MANUAL)[1] == (
        "demo: mode manual: a new version that passes becomes a canary at 0%; `gatekeeper promote` moves it on")


def test_promote_from_any_weight_goes_to_the_next_step_or_stable():
    for weight, expected in [(0, 25), (24, 25), (25, 50), (49, 50)]:
        assert pr.promote(Store(policy(stable="v1", canary="v2", weight=weight)), "demo")[0].weight == expected
    for weight in (50, 99, 100):
        assert pr.promote(Store(policy(stable="v1", canary="v2", weight=weight)), "demo")[0].stable == "v2"


def test_defaults_of_the_promoter():
    p = pr.Promoter(Store())
    assert (p.drain_seconds, p.stop_old, p.unhealthy_grace) == (10.0, True, 10.0)


# --- progressive mode: the analysis carried out (real Prometheus: tests/e2e/test_progressive.py) --

class Analyses:
    """The analysis store: the one service's analysis state is the bundle's `state`."""

    def __init__(self, store):
        self.store = store

    def get(self, service):
        return self.store.state

    def put(self, state):
        self.store.state = state


class GatesAndActions(NodeRecords):
    def set_gate(self, inst, passing, output):
        self.store.gates.append((inst.id, passing, output))


class AnalysisStore(Store):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.state, self.gates = None, []
        self.analysis, self.node_records = Analyses(self), GatesAndActions(self)


class Metrics:
    """Answers with the measurement queued for each version, or raises when told to."""
    def __init__(self):
        from gatekeeper.promotion.analysis import Measurement
        self.M = Measurement
        self.canary, self.down = Measurement(100, 100.0, 20.0), False

    def measure(self, service, version, window):
        from gatekeeper.prometheus import MetricsUnavailable
        if self.down:
            raise MetricsUnavailable("Prometheus at http://p: ConnectionError")
        return self.canary if version != "v1" else self.M(900, 100.0, 15.0)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def progressive(store, metrics, clock):
    from catalog.model import Analysis
    store.pol = store.pol or policy(stable="v1", mode="progressive")
    store.pol = RoutingPolicy(**{**store.pol.__dict__, "mode": "progressive",
                                 "analysis": Analysis(step=20, max_weight=60, interval=5, threshold=2, min_requests=10)})
    promoter = pr.Promoter(store, prometheus=metrics)
    promoter.progressive.clock = clock
    return promoter


def v2_in_analysis(versions=("v1", "v2")):
    """v1 stable in progressive mode, and v2 just admitted: its analysis started."""
    store, metrics, clock = AnalysisStore(policy(stable="v1"), versions=versions), Metrics(), Clock()
    promoter = progressive(store, metrics, clock)
    promoter.admitted(inst("v2"))
    return store, metrics, clock, promoter


def step(promoter, store, clock):
    clock.t += 5
    promoter.reconcile("demo", store.registered)


def test_progressive_mode_starts_a_passed_version_at_the_first_step_and_walks_it_to_stable():
    store, metrics, clock, promoter = v2_in_analysis()
    assert (store.pol.canary, store.pol.weight, store.state.weight, store.state.version) == ("v2", 20, 20, "v2")
    promoter.reconcile("demo", store.registered)              # not due yet: nothing moves
    assert store.pol.weight == 20 and [e for e, _ in store.hist].count("analysis") == 0
    weights = []
    for _ in range(3):
        step(promoter, store, clock)
        weights.append(store.pol.weight if store.pol.canary else "stable")
    assert weights == [40, 60, "stable"] and (store.pol.stable, store.pol.previous) == ("v2", "v1")
    assert ("promoted", {"version": "v2", "previous": "v1", "by": "gatekeeper (analysis)"}) in store.hist
    checks = [d for e, d in store.hist if e == "analysis"]
    assert [c["result"] for c in checks] == ["pass"] * 3
    assert checks[0]["canary"]["requests"] == 100 and checks[0]["stable"]["requests"] == 900


def test_progressive_mode_rolls_back_after_threshold_failures_and_notes_it_on_the_gates():
    store, metrics, clock, promoter = v2_in_analysis()
    metrics.canary = metrics.M(100, 95.0, 20.0)
    step(promoter, store, clock)
    assert (store.pol.canary, store.pol.weight, store.state.failed) == ("v2", 20, 1)
    step(promoter, store, clock)
    assert (store.pol.canary, store.pol.weight, store.pol.aborted, store.state.status) == ("", 0, "v2", "rolled back")
    reason = "rolled back at 20 %: success rate 95.0 % < 99 % (2 failed checks of 2)"
    assert ("aborted", {"version": "v2", "by": "gatekeeper (analysis)", "reason": reason}) in store.hist
    assert store.gates == [("h:v2-1:8080", True, f"ok; then {reason}")]
    step(promoter, store, clock)                                  # nothing left to judge
    assert [e for e, _ in store.hist].count("analysis") == 2 and promoter.next_due() is None


def test_progressive_mode_holds_while_prometheus_is_down_and_resumes_at_the_same_step():
    store, metrics, clock, promoter = v2_in_analysis()
    metrics.down = True
    step(promoter, store, clock)
    step(promoter, store, clock)
    assert store.pol.weight == 20 and [d["result"] for e, d in store.hist if e == "analysis"] == ["inconclusive"] * 2
    # a new leader: a fresh Promoter reads the state back from the store
    metrics.down = False
    successor = progressive(store, metrics, clock)
    step(successor, store, clock)
    assert store.pol.weight == 40 and store.state.weight == 40


def test_a_newer_version_mid_analysis_restarts_it_for_the_newer_one():
    store, metrics, clock, promoter = v2_in_analysis(versions=("v1", "v2", "v3"))
    step(promoter, store, clock)
    assert store.pol.weight == 40
    promoter.admitted(inst("v3"))
    assert (store.pol.canary, store.pol.weight, store.state.version, store.state.weight) == ("v3", 20, "v3", 20)
    assert ("analysis superseded", {"version": "v2", "by": "v3", "weight": 40}) in store.hist


def test_an_operators_weight_change_mid_analysis_is_not_overwritten_by_a_stale_step():
    store, metrics, clock, promoter = v2_in_analysis()
    store.pol = RoutingPolicy(**{**store.pol.__dict__, "canary": "", "weight": 0, "aborted": "v2"})  # operator aborted
    step(promoter, store, clock)
    assert (store.pol.canary, store.pol.weight) == ("", 0) and promoter.next_due() is None


def test_mode_progressive_takes_settings_validated_and_keeps_the_others():
    store = Store(policy(stable="v1"))
    p, msg = pr.set_mode(store, "demo", "progressive", {"step": 25, "interval": 3})
    assert (p.mode, p.analysis.step, p.analysis.interval, p.analysis.threshold) == ("progressive", 25, 3.0, 3)
    assert "canary at 25%" in msg and "every 3 s" in msg
    p, _ = pr.set_mode(store, "demo", "progressive", {"threshold": 5})
    assert (p.analysis.step, p.analysis.threshold) == (25, 5)
    with pytest.raises(InvalidValue, match="analysis.step"):
        pr.set_mode(store, "demo", "progressive", {"step": 0})
    assert store.pol.analysis.threshold == 5                       # nothing written on bad input


def test_the_containers_mode_labels_set_the_policy_when_it_is_admitted():
    from dataclasses import replace as dc_replace
    store, metrics = AnalysisStore(policy(stable="v1"), versions=("v1", "v2")), Metrics()
    promoter = pr.Promoter(store, prometheus=metrics)
    labelled = dc_replace(inst("v2"), mode="progressive", analysis="interval=4.0,step=30")
    promoter.admitted(labelled)
    p = store.pol
    assert (p.mode, p.analysis.step, p.analysis.interval, p.canary, p.weight) == ("progressive", 30, 4.0, "v2", 30)
    assert store.hist[0] == ("mode", {"mode": "progressive", "by": "label on v2-1", "settings": {
        "step": 30, "max_weight": 100, "interval": 4.0, "threshold": 3, "min_requests": 20, "success_rate": 99.0,
        "p99_ms": 500.0}})
    # a second instance of the same version, same labels: nothing to write, nothing to record
    writes = store.writes
    promoter.admitted(dc_replace(labelled, id="h:v2-2:8080"))
    assert store.writes == writes and [e for e, _ in store.hist].count("mode") == 1
    # an invalid analysis label (registered by something else than registrator) is ignored, not fatal
    promoter.admitted(dc_replace(inst("v3"), mode="manual", analysis="step=0"))
    assert (store.pol.mode, store.pol.analysis.step, store.pol.canary) == ("manual", 30, "v3")


def test_a_rolled_back_canary_tried_again_by_the_operator_gets_a_new_analysis():
    store, metrics, clock, promoter = v2_in_analysis()
    metrics.canary = metrics.M(100, 50.0, 20.0)
    step(promoter, store, clock)
    step(promoter, store, clock)
    assert store.pol.aborted == "v2" and store.state.status == "rolled back"
    pr.try_canary(store, "demo", "v2")                            # the operator: `gatekeeper canary demo v2`
    metrics.canary = metrics.M(100, 100.0, 20.0)
    promoter.reconcile("demo", store.registered)
    assert (store.state.status, store.state.failed, store.pol.weight) == ("running", 0, 20)
    step(promoter, store, clock)
    assert store.pol.weight == 40


def test_the_analysis_acts_only_on_the_canary_it_judged():
    store, metrics, clock, promoter = v2_in_analysis()
    writes = store.writes
    assert promoter._analysis_weight("demo", "v2", 20) is True and store.writes == writes    # already there
    assert promoter._analysis_weight("demo", "v3", 40) is False and store.pol.weight == 20   # not the canary
    assert promoter._analysis_promote("demo", "v3") is False and store.pol.stable == "v1"
    assert promoter._analysis_weight("demo", "v2", 40) is True and store.pol.weight == 40
    assert promoter._analysis_promote("demo", "v2") is True
    assert (store.pol.stable, store.pol.previous, store.pol.canary) == ("v2", "v1", "")
    assert store.hist[-1] == ("promoted", {"version": "v2", "previous": "v1", "by": "gatekeeper (analysis)"})
    assert promoter._analysis_roll_back("demo", "v2", "why", []) is False                  # no canary left


def test_a_label_that_sets_manual_mode_records_no_progressive_settings():
    from dataclasses import replace as dc_replace
    store = AnalysisStore(policy(stable="v1"), versions=("v1", "v2"))
    pr.Promoter(store).admitted(dc_replace(inst("v2"), mode="manual"))
    assert store.hist[0] == ("mode", {"mode": "manual", "by": "label on v2-1"})
    assert (store.pol.canary, store.pol.weight) == ("v2", 0)


def test_progressive_mode_says_it_needs_prometheus():
    _, msg = pr.set_mode(Store(policy(stable="v1")), "demo", "progressive")
    assert msg == ("demo: mode progressive: a new version that passes becomes a canary at 10%, then every 10 s gains "
                   "10% up to 100% and becomes stable while its success rate stays >= 99% and p99 <= 500 ms over at "
                   "least 20 requests; 3 failed checks roll it back (needs gatekeeper run --prometheus)")


def drained_event(version, *names):
    return ("drained", {"version": version, "stable": "x", "by": "gatekeeper", "containers": [
        {"name": n, "node": "h1", "id": "c-" + n, "started": "t-" + n, "instance": "h1:" + n + ":8080"}
        for n in names]})


def test_only_the_versions_drained_last_keep_their_stopped_containers_and_never_the_rollback_target():
    store = Store(policy(stable="v6", previous="v5"), versions=("v6",))
    store.hist += [drained_event("v1", "a1"), drained_event("v2", "a2", "b2"), drained_event("v3", "a3"),
                   drained_event("v4", "a4"), drained_event("v5", "a5")]
    p = pr.Promoter(store, keep_versions=2)
    p._remove_old_drained("demo")
    # v5 is the rollback target (kept whatever its age); of the others, v4 and v3 are kept
    assert [(a[0], a[1]) for a in store.actions] == [("c-a2", "remove"), ("c-b2", "remove"), ("c-a1", "remove")]
    assert store.actions[0][2:5] == ("h1", "h1:a2:8080", "t-a2")
    assert store.hist[-2:] == [
        ("removed", {"version": "v2", "by": "gatekeeper", "containers": [{"name": "a2", "node": "h1"},
                                                                          {"name": "b2", "node": "h1"}],
                     "reason": "only the 2 versions drained last are kept (gatekeeper run --keep-versions)"}),
        ("removed", {"version": "v1", "by": "gatekeeper", "containers": [{"name": "a1", "node": "h1"}],
                     "reason": "only the 2 versions drained last are kept (gatekeeper run --keep-versions)"})]
    p._remove_old_drained("demo")
    assert len(store.actions) == 3, "asked once"
    assert list(pr.kept_drained([e | {"event": ev} for ev, e in store.hist])) == ["v5", "v4", "v3"]
    store.pol = policy(stable="v6", previous="v2")   # a rollback target whose containers are gone
    with pytest.raises(pr.PromotionError, match=r"cannot roll demo back to v2: .* Deploy v2 again"):
        pr.rollback(store, "demo")
    store.hist.append(drained_event("v2", "c2"))     # deployed and drained again: kept again
    assert pr.rollback(store, "demo")[1].startswith("demo: rolling back to v2")


# --- a Swarm rolling update in auto mode --------------------------------------------------------

def task(version, n, admitted=True):
    i = Instance(id=f"h:demo.{n}.{version}:8080", service="demo", address="127.0.0.1", port=31000 + n,
                 version=version, container_id=f"c-{version}-{n}", container_name=f"demo.{n}.{version}",
                 image=f"demo:{version}", registered_by="r", swarm_service="demo")
    return RegisteredInstance(i, {i.gate_check_id: "passing" if admitted else "critical"})


def test_a_swarm_update_spreads_traffic_by_admitted_tasks_and_makes_the_new_version_stable_when_the_old_is_gone():
    store = Store(policy(stable="v1"))
    store.registered = [task("v1", 1), task("v1", 2), task("v1", 3), task("v2", 4)]
    p = pr.Promoter(store)
    p.admitted(store.registered[3].instance)                 # the update's first new task passed
    assert (store.pol.stable, store.pol.canary, store.pol.weight) == ("v1", "v2", 25)
    assert store.hist[-1] == ("canary", {"version": "v2", "weight": 25, "by": "gatekeeper (swarm update)"})
    store.registered = store.registered[1:]                   # Swarm stopped one old task
    p.reconcile("demo", store.registered)
    assert (store.pol.stable, store.pol.canary, store.pol.weight) == ("v1", "v2", 33)
    store.registered = [task("v1", 3), task("v2", 4), task("v2", 5, admitted=False)]
    p.reconcile("demo", store.registered)                     # a new task not through its gate yet
    assert store.pol.weight == 50
    store.registered = [task("v2", 4), task("v2", 5), task("v2", 6)]
    p.reconcile("demo", store.registered)                     # no old task left
    assert (store.pol.stable, store.pol.canary, store.pol.weight, store.pol.previous) == ("v2", "", 0, "v1")
    assert store.hist[-1] == ("promoted", {"version": "v2", "previous": "v1", "by": "gatekeeper (swarm update)"})


def test_a_rolled_back_swarm_update_withdraws_its_canary():
    store = Store(policy(stable="v1", canary="v2", weight=33))
    store.registered = [task("v1", 1), task("v1", 2), task("v1", 3)]        # Swarm put the old tasks back
    pr.Promoter(store).reconcile("demo", store.registered)
    assert (store.pol.stable, store.pol.canary, store.pol.weight) == ("v1", "", 0)
    assert store.hist[-1][0] == "canary withdrawn"


def test_plain_containers_and_other_modes_are_promoted_as_before():
    store = Store(policy(stable="v1"))
    store.registered = [reg("v1"), reg("v2")]
    pr.Promoter(store).admitted(inst("v2"))                   # plain containers: stable at once
    assert (store.pol.stable, store.pol.canary) == ("v2", "")
    manual = Store(policy(stable="v1", mode=MANUAL))
    manual.registered = [task("v1", 1), task("v2", 2)]
    pr.Promoter(manual).admitted(manual.registered[1].instance)
    assert (manual.pol.canary, manual.pol.weight) == ("v2", 0)   # manual: waits for promote, as before
    fresh = Store(policy(stable="v1"))
    fresh.registered = [task("v1", 1, admitted=False), task("v2", 2)]
    pr.Promoter(fresh).admitted(fresh.registered[1].instance)   # no admitted old task: stable at once
    assert (fresh.pol.stable, fresh.pol.canary) == ("v2", "")


def test_a_service_whose_every_instance_left_mid_analysis_leaves_no_timer_waking_the_daemon():
    store, metrics, clock, promoter = v2_in_analysis()
    assert promoter.next_due() is not None
    clock.t += 60                                     # its next check is long due, and no pass reaches it
    run_pass({}, [promoter])
    assert promoter.next_due() is None, "a pass every 0.1 s for ever"
    run_pass({"demo": store.registered}, [promoter])  # back with its instances: the analysis goes on
    assert promoter.next_due() is not None and [e for e, _ in store.hist].count("analysis") == 1


def test_a_drained_container_started_again_by_its_restart_policy_is_admitted_not_promoted():
    """A host's engine restarts: drained containers run with --restart always come back, pass
    their tests, and must not make their old version stable (and drain the current one)."""
    store = drained_store()
    back = Instance(id="h1:web-a:8080", service="demo", address="127.0.0.1", port=30001, version="v1",
                    container_id="c-a", container_name="web-a", image="demo:v1", registered_by="r",
                    started="t-a2", node="h1")
    pr.Promoter(store).admitted(back)
    assert (store.pol.stable, store.pol.canary) == ("v2", "")
    event, details = store.hist[-1]
    assert event == "drained container back" and details["version"] == "v1"
    assert "`gatekeeper rollback demo` makes it stable again" in details["reason"]
    pr.Promoter(store).admitted(inst("v1"))               # a new container of v1, run on purpose: promoted
    assert store.pol.stable == "v1"


def test_a_newer_version_still_under_test_when_one_is_promoted_is_not_drained_by_it():
    """v2 promoted while v3's container is still under test: v3 may pass, and be made stable,
    while v2's drain decides; only what was admitted when v2 was promoted is old."""
    store = Store(policy(stable="v2", previous="v1"), versions=("v1", "v2"))
    store.registered.append(reg("v3", admitted=False))
    sick = inst("v0")                                 # its gate open, its health check failing: old all the same
    store.registered.append(RegisteredInstance(sick, {sick.gate_check_id: "passing", sick.health_check_id: "critical"}))
    p, drains = pr.Promoter(store, drain_seconds=0), []
    p._drain = lambda service, stable, old: drains.append(old)
    p.drain_later("demo", "v2")
    deadline = time.monotonic() + 5
    while not drains and time.monotonic() < deadline:
        time.sleep(0.01)
    assert drains == [{inst("v1").container_id, sick.container_id}]


def test_a_rollback_asked_while_every_instance_of_the_service_is_gone_starts_the_drained_containers():
    """The new version down for good, every container gone: no pass reaches the service, and the
    rollback (when it is needed most) must still ask the drained containers' hosts to start them."""
    store = drained_store()
    store.registered = []
    pr.rollback(store, "demo")
    leader = pr.Promoter(store)
    run_pass({}, [leader])
    assert store.actions == [("c-a", "start", "h1", "h1:web-a:8080", "t-a", "rollback of demo to v1"),
                             ("c-b", "start", "h2", "h2:web-b:8080", "t-b", "rollback of demo to v1")]
    assert leader.next_due() is not None, "its deadline is watched"
