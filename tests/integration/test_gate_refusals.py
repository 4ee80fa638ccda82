"""What the gate refused stays refused when an operator asks for a retest (`gatekeeper retest`,
as the troubleshooting guide suggests for an error verdict): a container whose route another
service serves is refused again with the reason, not tested and admitted, so it cannot take that
service's route. Real Consul: the verdict, retest and gate records; the proxy's view of routes."""
from catalog.model import ERROR, PASSED, Instance, Verdict
from gatekeeper.admission.gate import Gate
from gatekeeper.reconciler import run_pass
from proxy_reloader.view import build_view
from tests.support.fakes import FakeTester
from testbed.processes import wait_until


def instance(service, n, path):
    return Instance(id=f"refuse:{service}:{n}:8080", service=service, address="127.0.0.1", port=32000 + n,
                    version="v1", container_id=f"c{service}{n}", container_name=f"{service}{n}", image="demo:v1",
                    registered_by="registrator@refuse", tests_image="demo-test:latest", proxy_path=path)


def test_a_retest_of_a_container_refused_for_a_taken_route_refuses_it_again(stores, unique):
    path = f"/{unique}/"
    owner, newcomer = instance(f"zz-{unique}", 1, path), instance(f"aa-{unique}", 2, path)
    mine = (owner.service, newcomer.service)
    for inst in (owner, newcomer):
        stores.instances.register(inst)
    stores.verdicts.put(Verdict(owner.id, owner.container_id, "demo-test:latest", PASSED, "9/9 passed", 1, 2))
    stores.instances.apply_gate(owner, True, "9/9 passed")
    tester = FakeTester()
    gate = Gate(stores, tester, forget_after=1e9)

    def one_pass():
        run_pass({s: i for s, i in stores.instances.all().items() if s in mine}, [gate])

    def settled():
        return not gate.testing

    try:
        one_pass()
        wait_until(settled, 30, "the pass's tests")
        refused = stores.verdicts.get(newcomer.id)
        assert refused.state == ERROR and refused.route_taken, refused

        stores.verdicts.request_retest(newcomer.id)
        one_pass()
        wait_until(settled, 30, "the retest")
        again = stores.verdicts.get(newcomer.id)
        assert again.state == ERROR and again.route_taken, f"a retest admitted what the gate refused: {again}"
        assert tester.runs == [], "its tests were run"
        assert newcomer.id not in stores.verdicts.retests(), "the retest stays asked for: refused again every pass"
        served = {r.service: r.path for r in build_view(stores.instances, stores.policies).routes}
        assert served.get(owner.service) == path and newcomer.service not in served, served
    finally:
        for inst in (owner, newcomer):
            stores.instances.deregister(inst.id)
            stores.verdicts.forget(inst.id)
            stores.verdicts.clear_retest(inst.id)
        for service in mine:
            stores.forget_service(service)


def test_a_restarted_container_whose_route_another_service_took_meanwhile_is_refused(stores, unique):
    """A's only container restarts (its restart policy, the healer): while its new run waits for
    its test, B is admitted at the same path. A's new run passed before, but it is asked the
    route's question again, and refused: two services are never admitted on one route."""
    from dataclasses import replace

    path = f"/{unique}/"
    b = instance(f"aa-{unique}", 1, path)                     # first by name: the proxy would keep it
    a = replace(instance(f"zz-{unique}", 2, path), started="2026-12-06T01:00:00Z")
    stores.instances.register(a)
    stores.instances.register(b)
    stores.verdicts.put(Verdict(a.id, a.container_id, "demo-test:latest", PASSED, "9/9 passed", 1, 2,
                                container_started="2026-12-06T00:00:00Z"))     # its earlier run
    stores.verdicts.put(Verdict(b.id, b.container_id, "demo-test:latest", PASSED, "9/9 passed", 1, 2))
    stores.instances.apply_gate(b, True, "9/9 passed")
    tester = FakeTester()
    gate = Gate(stores, tester, forget_after=1e9)
    try:
        run_pass({s: i for s, i in stores.instances.all().items() if s in (a.service, b.service)}, [gate])
        wait_until(lambda: not gate.testing, 30, "the pass's tests")
        verdict = stores.verdicts.get(a.id)
        assert verdict.state == ERROR and verdict.route_taken and verdict.applies_to(a), verdict
        assert tester.runs == []
    finally:
        for inst in (a, b):
            stores.instances.deregister(inst.id)
            stores.verdicts.forget(inst.id)
            stores.forget_service(inst.service)
