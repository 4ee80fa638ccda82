"""What a fault between a test's end and what follows it must not lose or do twice.

A gatekeeper that stops leading stops testing: the test running is aborted, and those still
queued behind it (a backlog larger than --parallel) are dropped, not run and recorded by a daemon
that no longer leads: no verdict, no closed gate over what the next leader admitted meanwhile.
A promotion cut short after the verdict was written is made by the next pass.
Real Consul: the verdict, gate and policy records; the tester stands in for the Docker one
(tests/integration/test_tester.py aborts real test containers)."""
import threading
import time
from dataclasses import replace

from catalog.model import PASSED, Instance, Verdict
from gatekeeper.admission.gate import Gate
from gatekeeper.admission.tester import RunResult
from gatekeeper.reconciler import run_pass
from tests.support.fakes import FakeTester
from testbed.processes import wait_until


class HeldTester(FakeTester):
    """Every run waits until it is aborted (the first) or runs at once (any other)."""

    def __init__(self):
        super().__init__()
        self.aborted = threading.Event()

    def abort_all(self):
        self.aborted.set()

    def run(self, image, url, iid):
        self.runs.append(iid)
        if len(self.runs) == 1:
            self.aborted.wait(30)
            return RunResult("error", "aborted", "", time.time(), time.time(), aborted=True)
        return RunResult(PASSED, "9/9 passed", "", time.time(), time.time())


def instance(service, n):
    return Instance(id=f"lead:{service}:{n}:8080", service=service, address="127.0.0.1", port=32100 + n,
                    version="v1", container_id=f"c{service}{n}", container_name=f"{service}{n}", image="demo:v1",
                    registered_by="registrator@lead", tests_image="demo-test:latest", proxy_path=f"/{service}/")


def test_tests_queued_when_leadership_is_lost_are_not_run_or_recorded(stores, unique):
    made = [instance(unique, n) for n in (1, 2, 3)]
    for inst in made:
        stores.instances.register(inst)
    tester = HeldTester()
    gate = Gate(stores, tester, parallel=1, forget_after=1e9)
    try:
        run_pass({s: i for s, i in stores.instances.all().items() if s == unique}, [gate])
        wait_until(lambda: tester.runs, 30, "the first test running")
        assert gate.pool.waiting() == 2
        # meanwhile the next leader admitted one of those queued here
        admitted = next(i for i in made if i.id not in tester.runs)
        stores.verdicts.put(Verdict(admitted.id, admitted.container_id, "demo-test:latest", PASSED, "9/9 passed",
                                    time.time(), time.time()))
        stores.instances.apply_gate(admitted, True, "9/9 passed (the next leader)")
        gate.leadership_lost()
        wait_until(lambda: not gate.testing, 30, "the queue drained")
        assert len(tester.runs) == 1, f"tests run after leadership was lost: {tester.runs[1:]}"
        assert stores.verdicts.get(admitted.id).summary == "9/9 passed"
        gates = {ri.instance.id: ri.gate_status for ri in stores.instances.of(unique)}
        assert gates[admitted.id] == "passing", "a daemon that no longer leads closed a gate"
        others = [i for i in made if i.id not in (admitted.id, tester.runs[0])]
        assert all(stores.verdicts.get(i.id) is None for i in others)
    finally:
        gate.shutdown()
        for inst in made:
            stores.instances.deregister(inst.id)
            stores.verdicts.forget(inst.id)
        stores.forget_service(unique)


def test_a_promotion_cut_short_after_the_verdict_is_made_at_the_next_pass(stores, unique):
    """The first pass of v2 is recorded, then Consul refuses the policy's change (no leader for a
    moment): v2 is admitted, and the pass that finds it so makes the promotion, once."""
    from consul.base import ConsulException
    from catalog.model import RoutingPolicy
    from gatekeeper.promotion.promoter import Promoter

    stores.policies.put(RoutingPolicy(unique, stable="v1"), cas=0)
    v2 = replace(instance(unique, 1), version="v2")
    stores.instances.register(v2)
    promoter, calls = Promoter(stores, stop_old=False), []

    def on_admitted(inst):
        calls.append(inst.version)
        if len(calls) == 1:
            raise ConsulException("500 No cluster leader")
        promoter.admitted(inst)

    gate = Gate(stores, FakeTester(), forget_after=1e9, on_admitted=on_admitted)

    def one_pass():
        run_pass({s: i for s, i in stores.instances.all().items() if s == unique}, [gate])
        wait_until(lambda: not gate.testing, 30, "the pass's tests")

    try:
        one_pass()
        assert stores.verdicts.get(v2.id).state == PASSED and calls == ["v2"]
        assert stores.policies.get(unique)[1].stable == "v1"
        stores.instances.apply_gate(v2, True, "9/9 passed")       # as its host's registrator does
        one_pass()
        assert stores.policies.get(unique)[1].stable == "v2", "the promotion was never made"
        one_pass()
        assert calls == ["v2", "v2"], "made once"
    finally:
        gate.shutdown()
        stores.instances.deregister(v2.id)
        stores.verdicts.forget(v2.id)
        stores.forget_service(unique)


class StepTester(FakeTester):
    """Each run waits until the test lets it end (`go[n].set()`), then passes."""

    def __init__(self):
        super().__init__()
        self.go = [threading.Event() for _ in range(5)]

    def run(self, image, url, iid):
        n = len(self.runs)
        self.runs.append(url)
        self.go[n].wait(30)
        return RunResult(PASSED, f"9/9 passed (run {n})", "", time.time(), time.time())


def test_a_container_replaced_under_the_same_name_mid_test_is_tested_once_and_its_successor_once(stores, unique):
    """compose recreating a container, or `docker rm -f web && docker run --name web`: the same
    instance id, another container. The old one's test records nothing and leaves the new one's
    test its mark, so the new one is tested once, not again and again."""
    old = instance(unique, 1)
    new = replace(old, container_id=f"{old.container_id}-new", port=old.port + 50)
    tester = StepTester()
    gate = Gate(stores, tester, parallel=1, forget_after=1e9)

    def one_pass():
        run_pass({s: i for s, i in stores.instances.all().items() if s == unique}, [gate])

    try:
        stores.instances.register(old)
        one_pass()
        wait_until(lambda: len(tester.runs) == 1, 30, "the old container's test running")
        stores.instances.deregister(old.id)
        stores.instances.register(new)
        one_pass()                                         # the new container's test, queued
        tester.go[0].set()
        wait_until(lambda: len(tester.runs) == 2, 30, "the new container's test running")
        assert gate.testing.get(new.id) == new.container_id, "the old test took the new one's mark away"
        one_pass()
        assert gate.pool.waiting() == 0, "the new container queued for a second test while its first runs"
        tester.go[1].set()
        wait_until(lambda: not gate.testing, 30, "its test done")
        one_pass()
        wait_until(lambda: not gate.testing, 30, "nothing more to test")
        verdict = stores.verdicts.get(new.id)
        assert verdict.container_id == new.container_id and verdict.summary == "9/9 passed (run 1)"
        assert len(tester.runs) == 2, tester.runs
    finally:
        for g in tester.go:
            g.set()
        gate.shutdown()
        stores.instances.deregister(new.id)
        stores.verdicts.forget(new.id)
        stores.forget_service(unique)


def test_what_an_operator_writes_while_a_test_runs_is_not_overwritten_when_it_ends(stores, unique):
    """`gatekeeper admit` while a first test hangs (the tests broken upstream): the forced
    verdict stays when the run times out. `gatekeeper retest` while a retest runs: asked again,
    it runs after, not cleared by the run that began before it."""
    hung, live = instance(unique, 1), instance(unique, 2)
    for inst in (hung, live):
        stores.instances.register(inst)
    stores.verdicts.put(Verdict(live.id, live.container_id, "demo-test:latest", PASSED, "9/9 passed", 1, 2))
    stores.instances.apply_gate(live, True, "9/9 passed")
    tester = StepTester()
    gate = Gate(stores, tester, parallel=2, forget_after=1e9)

    def one_pass():
        run_pass({s: i for s, i in stores.instances.all().items() if s == unique}, [gate])

    try:
        stores.verdicts.request_retest(live.id)
        one_pass()                                        # hung's first test and live's retest, both held
        wait_until(lambda: len(tester.runs) == 2, 30, "both tests running")
        forced = Verdict(hung.id, hung.container_id, "", PASSED, "forced admission: tests broken upstream",
                         time.time(), time.time())
        stores.verdicts.put(forced)                       # as `gatekeeper admit` writes it
        stores.verdicts.request_retest(live.id)           # asked again while its retest runs
        tester.go[0].set()
        tester.go[1].set()
        wait_until(lambda: not gate.testing, 30, "both runs ended")
        assert stores.verdicts.get(hung.id).summary == "forced admission: tests broken upstream"
        assert live.id in stores.verdicts.retests(), "the retest asked during the run was cleared by it"
    finally:
        for g in tester.go:
            g.set()
        gate.shutdown()
        for inst in (hung, live):
            stores.instances.deregister(inst.id)
            stores.verdicts.forget(inst.id)
            stores.verdicts.clear_retest(inst.id)
        stores.forget_service(unique)


def test_a_restarted_container_that_passed_before_is_admitted_again_and_promotes_nothing(stores, unique):
    """v1 kept running beside stable v2 (`--keep-old`, or the bad version after a rollback); its
    host reboots, or the healer restarts it: the new run is tested again and admitted, and v1
    does not become stable again."""
    from catalog.model import RoutingPolicy

    stores.policies.put(RoutingPolicy(unique, stable="v2", previous="v1"), cas=0)
    run1 = replace(instance(unique, 1), started="2026-12-06T00:00:00Z")
    run2 = replace(run1, started="2026-12-06T01:00:00Z")       # the same container, started again
    stores.verdicts.put(Verdict(run1.id, run1.container_id, "demo-test:latest", PASSED, "9/9 passed", 1, 2,
                                container_started=run1.started))
    stores.instances.register(run2)
    promoted = []
    gate = Gate(stores, FakeTester(), forget_after=1e9, on_admitted=promoted.append)
    try:
        run_pass({s: i for s, i in stores.instances.all().items() if s == unique}, [gate])
        wait_until(lambda: not gate.testing, 30, "its test")
        verdict = stores.verdicts.get(run2.id)
        assert verdict.state == PASSED and verdict.applies_to(run2), "tested again: a new run"
        assert promoted == [], "a new run of a container that passed before was promoted"
    finally:
        gate.shutdown()
        stores.instances.deregister(run2.id)
        stores.verdicts.forget(run2.id)
        stores.forget_service(unique)
