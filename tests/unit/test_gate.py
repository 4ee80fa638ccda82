"""The gate's decisions, with in-memory stores; tests/e2e runs the same against real parts."""
import threading
import time

from dataclasses import replace

from catalog.model import ERROR, FAILED, PASSED, Instance, RegisteredInstance, Verdict
import pytest

from gatekeeper.admission.gate import Gate
from gatekeeper.reconciler import run_pass
from tests.support.fakes import FakeTester


class Verdicts(dict):
    """The verdict store: instance id -> verdict; no retest asked."""

    def put(self, v, cas=None):
        self[v.instance_id] = v

    def ids(self):
        return list(self)

    def all(self):
        return dict(self)

    def forget(self, iid):
        self.pop(iid, None)

    def get_indexed(self, iid):
        return (1 if iid in self else 0), self.get(iid)

    def retests(self):
        return []

    def retest_asked(self, iid):
        return 1 if iid in self.retests() else 0

    def clear_retest(self, iid, cas=None):
        pass


class NodeRecords:
    """The node record store's gates, applied at once: the bundle's `gates` and `outputs`."""

    def __init__(self, store):
        self.store = store

    def set_gate(self, inst, passing, output):
        self.store.gates[inst.id] = "passing" if passing else "critical"
        self.store.outputs[inst.id] = output

    def set_gates(self, decisions):
        for inst, passing, output in decisions:
            self.set_gate(inst, passing, output)

    def forget_old_actions(self, registered, older_than):
        return []           # no container action here (tests/integration/test_stores.py: real ones)


class Policies:
    """No service has a default test image."""

    def tests_image(self, service):
        return ""


class Healing(dict):
    """The healing store: instance id -> its record (`get`)."""


class Instances:
    """The catalog as the daemon reads it: every instance with its gate check."""

    def __init__(self, store):
        self.store = store

    def all(self):
        return self.store.catalog()


class Store:
    """The stores the gate takes, in memory: `gates` and `outputs` hold what each gate shows."""

    def __init__(self, *instances):
        self.gates = {i.id: "critical" for i in instances}
        self.registered = {i.id: i for i in instances}
        self.outputs = {}
        self.verdicts, self.healing, self.policies = Verdicts(), Healing(), Policies()
        self.node_records, self.instances = NodeRecords(self), Instances(self)

    def catalog(self):
        out = {}
        for i in self.registered.values():
            out.setdefault(i.service, []).append(RegisteredInstance(i, {i.gate_check_id: self.gates[i.id]}))
        return out

    def forget_instances(self, iids):
        for iid in iids:
            self.verdicts.forget(iid)


def inst(cid="c1"):
    return Instance(id="h:web:8080", service="demo", address="127.0.0.1", port=32768, version="v1",
                    container_id=cid, container_name="web", image="demo:v1", registered_by="r",
                    tests_image="demo-test:latest")


def pass_over(gate):
    """One pass of the daemon over the catalog, with the gate as its only reconciler."""
    run_pass(gate.stores.instances.all(), [gate])


def settle(gate):
    gate.pool.shutdown(wait=True)


def test_new_instance_is_tested_against_its_own_address_and_admitted_on_pass():
    store, tester, admitted = Store(inst()), FakeTester(), []
    gate = Gate(store, tester, on_admitted=admitted.append)
    pass_over(gate)
    settle(gate)
    assert tester.runs == [("demo-test:latest", "http://127.0.0.1:32768")]
    assert store.gates["h:web:8080"] == "passing" and store.outputs["h:web:8080"] == "9/9 passed in 0.1 s"
    assert store.verdicts["h:web:8080"].state == PASSED and admitted


def test_failed_tests_leave_the_gate_critical_with_the_summary():
    store = Store(inst())
    gate = Gate(store, FakeTester(FAILED, "5/9 passed; failed: rec_shape"))
    pass_over(gate)
    settle(gate)
    assert store.gates["h:web:8080"] == "critical"
    assert "5/9 passed" in store.outputs["h:web:8080"]


def test_a_gate_opened_without_a_verdict_is_closed_and_retested():
    store, tester = Store(inst()), FakeTester(FAILED, "0/9")
    store.gates["h:web:8080"] = "passing"            # someone passed it by hand
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert len(tester.runs) == 1 and store.gates["h:web:8080"] == "critical"


def test_stored_verdict_is_reapplied_without_retesting():
    store, tester = Store(inst()), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", PASSED, "9/9 passed", 1, 2)
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert tester.runs == [] and store.gates["h:web:8080"] == "passing"


def test_a_new_container_under_the_same_name_is_tested_again():
    store, tester = Store(inst(cid="new")), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "old", "demo-test:latest", PASSED, "9/9 passed", 1, 2)
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert len(tester.runs) == 1


def test_the_same_container_restarted_is_a_new_run_and_tested_again():
    from dataclasses import replace
    restarted = replace(inst(), started="2026-11-28T10:00:05Z")
    store, tester = Store(restarted), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", PASSED, "9/9 passed", 1, 2,
                                           container_started="2026-11-28T09:00:00Z")
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert len(tester.runs) == 1
    assert store.verdicts["h:web:8080"].container_started == "2026-11-28T10:00:05Z"
    # ... and that run's verdict is kept for it: registered again (a registrator restart), no retest
    store.gates["h:web:8080"] = "critical"
    pass_over(gate)
    settle(gate)
    assert len(tester.runs) == 1 and store.gates["h:web:8080"] == "passing"


def test_a_container_the_healer_gave_up_on_keeps_its_gate_shut_and_says_why():
    store, tester = Store(inst()), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", PASSED, "9/9 passed", 1, 2)
    store.healing["h:web:8080"] = {"gave_up": True, "reason": "gave up healing: restarted 3 times"}
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert tester.runs == [] and store.gates["h:web:8080"] == "critical"
    assert store.outputs["h:web:8080"] == "gave up healing: restarted 3 times"


def test_tests_run_in_parallel_but_no_more_than_the_bound():
    import threading

    class SlowTester(FakeTester):
        def __init__(self):
            super().__init__()
            self.now = self.peak = 0
            self.lock = threading.Lock()

        def run(self, image, url, iid):
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            time.sleep(0.2)
            with self.lock:
                self.now -= 1
            return super().run(image, url, iid)

    instances = [Instance(id=f"h:web{i}:8080", service="demo", address="127.0.0.1", port=30000 + i, version="v1",
                          container_id=f"c{i}", container_name=f"web{i}", image="demo:v1", registered_by="r",
                          tests_image="demo-test:latest") for i in range(6)]
    store, tester = Store(*instances), SlowTester()
    gate = Gate(store, tester, parallel=2)
    pass_over(gate)
    settle(gate)
    assert len(tester.runs) == 6 and tester.peak == 2


def test_a_passing_reverification_does_not_promote_again():
    store, admitted = Store(inst()), []
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", PASSED, "9/9 passed", 1, 2)
    store.gates["h:web:8080"] = "passing"
    gate = Gate(store, FakeTester(), on_admitted=admitted.append, reverify_every=0.001)
    pass_over(gate)
    settle(gate)
    assert store.verdicts["h:web:8080"].finished > 2, "re-verified"
    assert admitted == []


def untested_inst():
    return Instance(id="h:web:8080", service="demo", address="127.0.0.1", port=32768, version="v1",
                    container_id="c1", container_name="web", image="demo:v1", registered_by="r")


def test_an_error_for_want_of_a_test_image_is_retested_once_the_service_has_a_default():
    from catalog.model import ERROR
    store, tester, admitted = Store(untested_inst()), FakeTester(), []
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "", ERROR, "no gatekeeper.tests label", 1, 2)
    gate = Gate(store, tester, on_admitted=admitted.append)
    pass_over(gate)
    settle(gate)
    assert tester.runs == [], "no default image yet: the error verdict stands"
    store.policies.tests_image = lambda service: "demo-test:latest"
    gate = Gate(store, tester, on_admitted=admitted.append)
    pass_over(gate)
    settle(gate)
    assert tester.runs == [("demo-test:latest", "http://127.0.0.1:32768")]
    assert store.gates["h:web:8080"] == "passing" and [i.id for i in admitted] == ["h:web:8080"]


def test_a_failed_verdict_with_an_image_is_not_retested_by_a_default_image():
    store, tester = Store(inst()), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", FAILED, "0/9", 1, 2)
    store.policies.tests_image = lambda service: "other-test:latest"
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert tester.runs == []


def test_a_requested_retest_that_passes_after_a_failure_is_a_first_admission():
    store, admitted = Store(inst()), []
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", FAILED, "0/9", 1, 2)
    store.verdicts.retests = lambda: ["h:web:8080"]
    gate = Gate(store, FakeTester(), on_admitted=admitted.append)
    pass_over(gate)
    settle(gate)
    assert store.gates["h:web:8080"] == "passing"
    assert [i.id for i in admitted] == ["h:web:8080"], "its service must get a routing policy"


def test_verdicts_of_instances_gone_longer_than_the_grace_period_are_removed():
    clock = [100.0]
    store = Store(inst())
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", PASSED, "9/9 passed", 1, 2)
    store.verdicts["h:gone:8080"] = Verdict("h:gone:8080", "c0", "demo-test:latest", FAILED, "0/9", 1, 2)
    gate = Gate(store, FakeTester(), forget_after=60, clock=lambda: clock[0])
    pass_over(gate)
    clock[0] += 59
    pass_over(gate)
    assert set(store.verdicts) == {"h:web:8080", "h:gone:8080"}, "within the grace period both stay"
    clock[0] += 16                     # past the grace period and the next sweep (every grace/4)
    pass_over(gate)
    settle(gate)
    assert set(store.verdicts) == {"h:web:8080"}, "the live instance's verdict is never removed"


class RecordedVerdicts(Verdicts):
    def __init__(self, store):
        super().__init__()
        self.store = store

    def put(self, v, cas=None):
        self.store.log.append(("verdict", v.state, v.container_id, v.tests_image, v.summary))
        super().put(v)

    def clear_retest(self, iid, cas=None):
        self.store.cleared.append(iid)


class RecordedGates(NodeRecords):
    def set_gate(self, inst, passing, output):
        self.store.log.append(("gate", passing, output))
        super().set_gate(inst, passing, output)


class Recording(Store):
    """Keeps every verdict and gate write in order, to check what the UI shows during a test."""

    def __init__(self, *instances):
        super().__init__(*instances)
        self.log, self.cleared = [], []
        self.verdicts, self.node_records = RecordedVerdicts(self), RecordedGates(self)


def test_a_first_test_closes_the_gate_with_what_runs_then_records_the_result_of_that_container():
    store = Recording(inst())
    gate = Gate(store, FakeTester(FAILED, "5/9 passed"))
    pass_over(gate)
    settle(gate)
    assert store.log == [("verdict", "testing", "c1", "demo-test:latest", "testing with demo-test:latest"),
                         ("gate", False, "testing with demo-test:latest"),
                         ("verdict", "failed", "c1", "demo-test:latest", "5/9 passed"),
                         ("gate", False, "failed: 5/9 passed")]
    assert store.verdicts["h:web:8080"].log_tail == "log" and gate.testing == {}


def test_a_reverification_leaves_the_gate_open_while_it_runs_and_clears_its_request():
    store = Recording(inst())
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", PASSED, "9/9 passed", 1, 2)
    store.gates["h:web:8080"] = "passing"
    store.verdicts.retests = lambda: ["h:web:8080"]
    gate = Gate(store, FakeTester(FAILED, "0/9"))
    pass_over(gate)
    settle(gate)
    assert store.log == [("verdict", "failed", "c1", "demo-test:latest", "0/9"), ("gate", False, "failed: 0/9")]
    assert store.cleared == ["h:web:8080"]


def test_no_test_image_at_all_is_run_as_none_and_shown_so():
    store = Recording(untested_inst())
    tester = FakeTester(FAILED, "no gatekeeper.tests label")
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert tester.runs == [("", "http://127.0.0.1:32768")]
    assert store.log[1] == ("gate", False, "testing with (no tests image)")


def test_an_aborted_run_records_nothing_and_a_consul_refusal_or_a_bug_frees_the_instance():
    from catalog.consul_client import ConsulError

    class Aborting(FakeTester):
        def run(self, image, url, iid):
            from dataclasses import replace
            return replace(super().run(image, url, iid), aborted=True)
    store = Recording(inst())
    gate = Gate(store, Aborting())
    pass_over(gate)
    settle(gate)
    assert [e for e in store.log if e[0] == "verdict"] == [("verdict", "testing", "c1", "demo-test:latest",
                                                            "testing with demo-test:latest")]
    for error in (ConsulError("PUT gone: 404"), RuntimeError("bug")):
        class Failing(NodeRecords):
            def set_gate(self, inst, passing, output, error=error):
                raise error
        failing = Store(inst())
        failing.node_records = Failing(failing)
        gate = Gate(failing, FakeTester())
        pass_over(gate)
        settle(gate)
        assert gate.testing == {}, "the instance can be tested again"


def test_an_instance_with_a_docker_healthcheck_waits_for_healthy_before_its_test():
    from dataclasses import replace
    i = replace(inst(), docker_health=True)

    class Health(Store):
        health = "critical"

        def catalog(self):
            return {"demo": [RegisteredInstance(i, {i.gate_check_id: self.gates[i.id],
                                                    i.docker_health_check_id: self.health})]}
    store, tester = Health(i), FakeTester()
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert tester.runs == []
    store.health = "passing"
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert len(tester.runs) == 1


def test_a_stored_failure_closes_a_gate_found_open_and_an_instance_under_test_is_left_alone():
    store, tester = Store(inst()), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", FAILED, "0/9", 1, 2)
    store.gates["h:web:8080"] = "passing"
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert store.gates["h:web:8080"] == "critical" and store.outputs["h:web:8080"] == "failed: 0/9"
    assert tester.runs == []
    busy = Gate(Store(inst()), tester)
    busy.testing["h:web:8080"] = "c1"
    pass_over(busy)
    settle(busy)
    assert tester.runs == [], "already under test: not started twice"


def sample(name, **labels):
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_instance_tested_on_arrival_keeps_its_gate_open_time_through_a_pass_that_had_not_seen_it():
    """A pass reads its snapshot; the instance registers and is tested on arrival meanwhile; the
    pass then begins with the snapshot that does not have it: its gate opening still counts."""
    class Held(FakeTester):
        def __init__(self):
            super().__init__()
            self.go = threading.Event()

        def run(self, image, url, iid):
            self.go.wait(5)
            return super().run(image, url, iid)

    opened = sample("gatekeeper_gate_open_seconds_count", service="demo")
    store, tester = Store(), Held()
    gate = Gate(store, tester)
    pass_over(gate)                                              # a first pass: arrivals are acted on
    stale = store.catalog()                                      # read before the instance came
    new = inst()
    store.gates[new.id], store.registered[new.id] = "critical", new
    gate.arrived("demo", [RegisteredInstance(new, {new.gate_check_id: "critical"})])
    run_pass(stale, [gate])
    tester.go.set()
    settle(gate)
    assert sample("gatekeeper_gate_open_seconds_count", service="demo") == opened + 1


def test_test_runs_and_the_time_to_an_open_gate_are_counted_per_service_and_result():
    """gatekeeper's /metrics: every run by result, and first seen -> gate open for a first pass only."""
    runs, opened = (sample("gatekeeper_test_runs_total", service="demo", result=r) for r in (PASSED, FAILED)), \
        sample("gatekeeper_gate_open_seconds_count", service="demo")
    passed_before, failed_before = runs
    store = Store(inst())
    gate = Gate(store, FakeTester(), reverify_every=0.001)
    pass_over(gate)
    settle(gate)
    assert sample("gatekeeper_test_runs_total", service="demo", result=PASSED) == passed_before + 1
    assert sample("gatekeeper_gate_open_seconds_count", service="demo") == opened + 1
    assert sample("gatekeeper_test_duration_seconds_count", service="demo") >= 1
    assert gate.first_seen == {}
    gate = Gate(store, FakeTester(), reverify_every=0.001)        # a re-verification: a run, no new gate opening
    store.gates["h:web:8080"] = "passing"
    time.sleep(0.01)                                              # the last pass is older than 0.001 s
    pass_over(gate)
    settle(gate)
    assert sample("gatekeeper_test_runs_total", service="demo", result=PASSED) == passed_before + 2
    assert sample("gatekeeper_gate_open_seconds_count", service="demo") == opened + 1
    failing = Store(inst("c2"))
    gate = Gate(failing, FakeTester(state=FAILED, summary="1/9 passed"))
    pass_over(gate)
    settle(gate)
    assert sample("gatekeeper_test_runs_total", service="demo", result=FAILED) == failed_before + 1
    assert sample("gatekeeper_gate_open_seconds_count", service="demo") == opened + 1


def test_a_gate_that_keeps_disagreeing_is_written_again_at_once_then_backing_off_to_a_minute():
    """A host whose registrator is down does not apply what gatekeeper writes; writing it again on
    every pass helps nobody. Once the gate agrees, the next disagreement is answered at once."""
    now = [1000.0]
    store, tester = Store(inst()), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", FAILED, "0/9", 1, 2)
    writes = []
    real = store.node_records.set_gate

    def set_gate(i, passing, output):
        writes.append(now[0])
        real(i, passing, output)
        store.gates[i.id] = "passing"                  # ... and nobody applies it: the gate stays forged
    store.node_records.set_gate = set_gate
    store.gates["h:web:8080"] = "passing"
    gate = Gate(store, tester, clock=lambda: now[0])
    for t in range(1000, 1200):
        now[0] = float(t)
        pass_over(gate)
    assert [w - 1000 for w in writes] == [0, 5, 15, 35, 75, 135, 195], writes
    store.node_records.set_gate = real
    store.gates["h:web:8080"] = "critical"             # the registrator is back and applied it
    pass_over(gate)
    store.gates["h:web:8080"] = "passing"              # forged again
    store.node_records.set_gate = set_gate
    now[0] = 1200.5
    pass_over(gate)
    assert writes[-1] == 1200.5, "answered at once, not after the back-off"
    settle(gate)
    assert tester.runs == []


def test_reverification_takes_only_admitted_instances_whose_pass_is_old_enough_and_keeps_their_gate_open():
    """Due: admitted, passed, last passed longer ago than reverify_every. Not due: a pass just
    now, a failure (its gate is closed, not retested), an instance out of traffic for another
    check. A re-verification keeps the gate open while it runs."""
    def web(n):
        return Instance(id=f"h:web{n}:8080", service="demo", address="127.0.0.1", port=30000 + n, version="v1",
                        container_id=f"c{n}", container_name=f"web{n}", image="demo:v1", registered_by="r",
                        tests_image="demo-test:latest")
    out_of_traffic, failed, recent, due = web(1), web(2), web(3), web(4)
    store = Recording(out_of_traffic, failed, recent, due)
    now = time.time()
    for i, state, finished in ((out_of_traffic, PASSED, 2), (failed, FAILED, 2), (recent, PASSED, now), (due, PASSED, 2)):
        store.verdicts[i.id] = Verdict(i.id, i.container_id, "demo-test:latest", state, "result", 1, finished)
        store.gates[i.id] = "passing"
    store.catalog = lambda: {"demo": [
        RegisteredInstance(i, {i.gate_check_id: "passing", **({"health": "critical"} if i is out_of_traffic else {})})
        for i in store.registered.values()]}
    tester = FakeTester()
    gate = Gate(store, tester, reverify_every=600)
    pass_over(gate)
    settle(gate)
    assert [url for _, url in tester.runs] == ["http://127.0.0.1:30004"], tester.runs
    assert ("gate", False, "failed: result") in store.log, "the stored failure closes its gate"
    assert not [e for e in store.log if e[0] == "gate" and e[1] is False and e[2] != "failed: result"], \
        f"a re-verification closed a gate: {store.log}"


def test_the_healers_reason_is_written_once_and_a_record_without_one_still_shuts_the_gate():
    store, tester = Recording(inst()), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", PASSED, "9/9 passed", 1, 2)
    store.healing["h:web:8080"] = {"gave_up": True, "reason": "gave up healing: restarted 3 times"}
    gate = Gate(store, tester)
    pass_over(gate)
    store.catalog = lambda: {"demo": [RegisteredInstance(inst(), {inst().gate_check_id: "critical"},
                                                         gate_output="gave up healing: restarted 3 times")]}
    pass_over(gate)                                    # the gate already says so: nothing written again
    store.healing["h:web:8080"] = {"gave_up": True}
    pass_over(gate)
    settle(gate)
    assert tester.runs == []
    assert [e for e in store.log if e[0] == "gate"] == [("gate", False, "gave up healing: restarted 3 times"),
                                                        ("gate", False, "gave up healing")]


def test_an_instance_whose_route_another_service_serves_is_refused_with_the_reason_then_tested_when_free():
    serving = replace(inst(), id="h:api:8080", service="api", container_id="c-api", proxy_host="shop.test",
                      proxy_path="/api/")
    newcomer = replace(inst(), id="h:newapi:8080", service="newapi", container_id="c-new",
                       proxy_host="*.shop.test,shop.test", proxy_path="/api/")
    elsewhere = replace(inst(), id="h:other:8080", service="other", container_id="c-other",
                        proxy_host="shop.test", proxy_path="/other/")
    store = Store(serving, newcomer, elsewhere)
    store.gates[serving.id] = "passing"
    store.verdicts.put(Verdict(serving.id, "c-api", "demo-test:latest", PASSED, "9/9 passed", 1, 2))
    tester = FakeTester()
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    verdict = store.verdicts[newcomer.id]
    assert verdict.state == ERROR and verdict.route_taken
    assert store.gates[newcomer.id] == "critical"
    assert store.outputs[newcomer.id] == (
        "error: route taken: shop.test/api/ is already routed to service api; give this container another "
        "proxy.path or proxy.host, or remove api's instances")
    assert [url for _, url in tester.runs] == [f"http://127.0.0.1:{elsewhere.port}"]   # only the other was tested
    # the serving service goes: the refused instance is tested and admitted
    del store.registered[serving.id]
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert store.verdicts[newcomer.id].state == PASSED and store.gates[newcomer.id] == "passing"


def test_a_route_held_only_by_instances_not_admitted_does_not_refuse_anyone():
    waiting = replace(inst(), id="h:a:8080", service="a", container_id="c-a", proxy_path="/same/")
    newcomer = replace(inst(), id="h:b:8080", service="b", container_id="c-b", proxy_path="/same/")
    store = Store(waiting, newcomer)
    store.verdicts.put(Verdict(waiting.id, "c-a", "demo-test:latest", FAILED, "1 failed", 1, 2))
    gate = Gate(store, FakeTester())
    pass_over(gate)
    settle(gate)
    assert store.verdicts[newcomer.id].state == PASSED


def test_an_instance_registered_for_a_udp_port_holds_no_route():
    """A DNS server's UDP port is in the catalog but never proxied: a web service may take its
    path, and the UDP instance is not refused for a route it does not claim."""
    dns = replace(inst(), id="h:dns:53:udp", service="dns", container_id="c-dns", proxy_path="/dns/", tags=("udp",))
    web = replace(inst(), id="h:web2:8080", service="web", container_id="c-web", proxy_path="/dns/")
    store = Store(dns, web)
    store.gates[dns.id] = "passing"
    store.verdicts.put(Verdict(dns.id, "c-dns", "demo-test:latest", PASSED, "9/9 passed", 1, 2))
    gate = Gate(store, FakeTester())
    pass_over(gate)
    settle(gate)
    assert store.verdicts[web.id].state == PASSED and store.gates[web.id] == "passing"


def pass_with_one_admitted(admitted, *others):
    """One pass over `admitted` (passed, its gate open) and `others` (new): (store, tester)."""
    store = Store(admitted, *others)
    store.gates[admitted.id] = "passing"
    store.verdicts.put(Verdict(admitted.id, admitted.container_id, "demo-test:latest", PASSED, "9/9 passed", 1, 2))
    tester = FakeTester()
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    return store, tester


def test_a_plain_container_of_a_service_swarm_runs_is_kept_out_with_the_reason_until_swarm_serves_nothing():
    task = replace(inst(), id="h:demo.1.x:8080", container_id="c-task", swarm_service="demo", swarm_task="t1")
    new_task = replace(inst(), id="h:demo.2.y:8080", container_id="c-task2", port=30002, swarm_service="demo",
                       swarm_task="t2")
    plain = replace(inst(), id="h:web2:8080", container_id="c-plain", port=30003, version="v2")
    store, tester = pass_with_one_admitted(task, new_task, plain)
    verdict = store.verdicts[plain.id]
    assert verdict.state == ERROR and verdict.other_owner and store.gates[plain.id] == "critical"
    assert store.outputs[plain.id] == (
        "error: other owner: service demo is run by Swarm service demo; deploy new versions with "
        "`docker service update --image IMAGE demo`, or remove that Swarm service first")
    assert [url for _, url in tester.runs] == ["http://127.0.0.1:30002"]     # Swarm's own new task is tested
    # the Swarm service is removed: the plain container is tested and may serve
    del store.registered[task.id], store.registered[new_task.id]
    gate = Gate(store, tester)
    pass_over(gate)
    settle(gate)
    assert store.verdicts[plain.id].state == PASSED and store.gates[plain.id] == "passing"


def test_a_swarm_task_of_a_service_plain_containers_run_is_kept_out_and_a_lone_swarm_task_is_not():
    plain = replace(inst(), container_id="c-plain")
    task = replace(inst(), id="h:demo.1.x:8080", container_id="c-task", port=30002, swarm_service="demo-swarm",
                   swarm_task="t1")
    other = replace(inst(), id="h:api.1.z:8080", service="api", container_id="c-api", port=30003,
                    swarm_service="api", swarm_task="t9")
    store, tester = pass_with_one_admitted(plain, task, other)
    assert store.outputs[task.id] == (
        "error: other owner: service demo is run by plain containers (1 admitted); remove them first, or give "
        "Swarm service demo-swarm another SERVICE_NAME")
    assert [url for _, url in tester.runs] == ["http://127.0.0.1:30003"]     # api has no owner yet: tested


# --- thousands of instances: one read, one batch of writes, the newest tested first ---------------

def many(n, prefix="bulk"):
    return [replace(inst(f"{prefix}{k}"), id=f"h:{prefix}{k}:8080", container_name=f"{prefix}{k}") for k in range(n)]


def test_a_pass_reads_every_verdict_at_once_and_writes_its_corrections_together():
    instances = many(3)
    store = Store(*instances)
    for i in instances:
        store.verdicts[i.id] = Verdict(i.id, i.container_id, "demo-test:latest", PASSED, "9/9", 1, 2)
    reads, batches = [], []
    store.verdicts.all = lambda: (reads.append(1), dict(store.verdicts))[1]
    store.verdicts.get = lambda iid: pytest.fail("a pass reads verdicts one by one")
    store.node_records.set_gate = lambda *a: pytest.fail("a correction written on its own")
    store.node_records.set_gates = lambda decisions: batches.append([(i.id, p) for i, p, _ in decisions])
    gate = Gate(store, FakeTester())
    pass_over(gate)
    assert reads == [1] and batches == [[(i.id, True) for i in instances]]
    settle(gate)


def test_a_container_started_during_a_backlog_is_tested_before_the_backlog():
    release, running = threading.Event(), threading.Event()

    class Slow(FakeTester):
        def run(self, image, url, iid):
            running.set()
            release.wait(5)
            return super().run(image, url, iid)
    backlog = many(20)
    store, tester = Store(*backlog), Slow()
    gate = Gate(store, tester, parallel=1)
    pass_over(gate)
    assert running.wait(5)                             # one test runs, nineteen wait
    new = replace(inst("fresh"), id="h:fresh:8080", port=40000)
    store.registered[new.id], store.gates[new.id] = new, "critical"
    pass_over(gate)
    release.set()
    settle(gate)
    assert tester.runs[1] == ("demo-test:latest", "http://127.0.0.1:40000"), "next after the one running"
    assert len(tester.runs) == 21


def test_a_verdict_written_while_the_pass_reads_still_counts_in_that_pass():
    release, done = threading.Event(), threading.Event()

    class Held(FakeTester):
        def run(self, image, url, iid):
            release.wait(5)
            return super().run(image, url, iid)
    store, tester = Store(inst()), Held()
    gate = Gate(store, tester, on_admitted=lambda i: done.set())
    pass_over(gate)                                    # the test starts and is held

    def read_racing_the_test():
        """The read begins, the test ends and writes its verdict, the read answers without it."""
        release.set()
        assert done.wait(5)
        time.sleep(0.05)                               # the worker has let go of the instance
        return {}
    store.verdicts.all = read_racing_the_test
    pass_over(gate)
    settle(gate)
    assert len(tester.runs) == 1, "tested once, not again"


def test_an_instance_shown_as_it_arrives_is_tested_once_a_pass_has_read_the_verdicts_and_only_once():
    """The daemon shows new instances before its next pass (a pass over a backlog takes seconds):
    the gate tests those with no verdict for their container, once, and leaves the rest to the pass."""
    store, tester = Store(inst()), FakeTester()
    gate = Gate(store, tester)
    arrived = store.catalog()["demo"]
    gate.arrived("demo", arrived)                  # before any pass: the verdicts are not read yet
    settle(gate)
    assert tester.runs == []

    store, tester = Store(inst()), FakeTester()
    store.verdicts["h:web:8080"] = Verdict("h:web:8080", "c1", "demo-test:latest", FAILED, "0/9", 1, 2)
    later = replace(inst("c2"), id="h:web2:8080")  # a second container, arrived after the first pass
    gate = Gate(store, tester)
    pass_over(gate)
    store.registered[later.id], store.gates[later.id] = later, "critical"
    gate.testing["h:web2:8080"] = "c0"              # an older container of that id still under test
    gate.arrived("demo", store.catalog()["demo"])  # the failed one has its verdict: not retested
    gate.arrived("demo", store.catalog()["demo"])  # shown twice (and the pass too): tested once
    pass_over(gate)
    settle(gate)
    assert tester.runs == [("demo-test:latest", "http://127.0.0.1:32768")]
    assert store.verdicts["h:web2:8080"].container_id == "c2" and store.gates["h:web2:8080"] == "passing"
    assert store.gates["h:web:8080"] == "critical"
