"""Why an instance is (not) served: one sentence per case, from the same route the proxy uses.
The same explanations are checked on the real stack in tests/e2e/test_operator_day.py."""
from catalog.model import ERROR, FAILED, PASSED, TESTING, Instance, RegisteredInstance, RoutingPolicy, Verdict
from catalog.routing import route_for
from gatekeeper.report.explain import explain_instance, proxy_answer


def inst(version="v1", port=1, cid=None, docker_health=False):
    return Instance(id=f"h:c{port}:8080", service="demo", address="127.0.0.1", port=port, version=version,
                    container_id=cid or f"c{port}", container_name=f"c{port}", image=f"demo:{version}",
                    registered_by="r", docker_health=docker_health)


def reg(i, gate="passing", **extra):
    return RegisteredInstance(i, {i.gate_check_id: gate, **extra})


def verdict(i, state=PASSED, image="demo-test:latest", cid=None):
    return Verdict(i.id, cid or i.container_id, image, state, f"{state} summary", 1, 2)


def explain(ri, v, policy, registered):
    return explain_instance(ri, v, policy, route_for("demo", registered, policy))


def test_before_and_during_tests():
    a = inst(docker_health=True)
    ri = reg(a, "critical", **{a.docker_health_check_id: "critical"})
    assert explain(ri, None, None, [ri]).state == "waiting for health"
    b = inst(port=2)
    rb = reg(b, "critical")
    assert explain(rb, None, None, [rb]).state == "awaiting tests"
    assert explain(rb, verdict(b, cid="older container"), None, [rb]).state == "awaiting tests"
    assert explain(rb, verdict(b, TESTING), None, [rb]).state == "testing"


def test_failed_and_errors_say_what_to_do():
    a = inst()
    ri = reg(a, "critical")
    e = explain(ri, verdict(a, ERROR, image=""), None, [ri])
    assert not e.serving and e.state == "tests error" and "gatekeeper tests demo IMAGE" in e.why
    e = explain(ri, verdict(a, FAILED), None, [ri])
    assert e.state == "tests failed" and "gatekeeper retest h:c1:8080" in e.why


def test_served_roles_and_the_reasons_an_admitted_instance_gets_nothing():
    v1, v2, v3, v0 = inst("v1", 1), inst("v2", 2), inst("v3", 3), inst("v0", 4)
    regs = [reg(v1), reg(v2), reg(v3), reg(v0)]
    policy = RoutingPolicy("demo", stable="v1", canary="v2", weight=20, previous="v0", aborted="v3")
    got = {ri.instance.version: explain(ri, verdict(ri.instance), policy, regs) for ri in regs}
    assert (got["v1"].serving, got["v1"].state) == (True, "stable")
    assert (got["v2"].serving, got["v2"].state) == (True, "canary 20%")
    assert (got["v3"].serving, got["v3"].state) == (False, "aborted") and "gatekeeper canary demo v3" in got["v3"].why
    assert (got["v0"].serving, got["v0"].state) == (False, "previous")
    zero = RoutingPolicy("demo", stable="v1", canary="v2", weight=0)
    assert explain(regs[1], verdict(v2), zero, regs).state == "canary 0%"
    other = RoutingPolicy("demo", stable="v1")
    assert explain(regs[2], verdict(v3), other, regs).state == "not routed"


def test_a_failing_health_check_takes_a_passed_instance_out_unless_the_panic_policy_serves_it():
    a, b = inst("v1", 1), inst("v1", 2)
    sick = reg(a, **{a.health_check_id: "critical"})
    well = reg(b)
    policy = RoutingPolicy("demo", stable="v1")
    e = explain(sick, verdict(a), policy, [sick, well])
    assert (e.serving, e.state) == (False, "unhealthy") and "health critical" in e.why
    e = explain(sick, verdict(a), policy, [sick])            # every instance sick: panic keeps it serving
    assert e.serving and "panic" in e.why


def test_what_the_proxy_answers():
    a = inst()
    assert proxy_answer(0, None).startswith("404")
    assert proxy_answer(1, route_for("demo", [reg(a, "critical")], None)).startswith("503")
    assert proxy_answer(1, route_for("demo", [reg(a)], RoutingPolicy("demo", stable="v1"))) == "200 from v1"


def test_each_case_in_full():
    """Every explanation compared whole: serving (a real bool), the short state and the sentence."""
    from catalog.model import Verdict as V
    from gatekeeper.report.explain import Explanation as E
    a = inst(docker_health=True)
    waiting = reg(a, "critical", **{a.docker_health_check_id: "critical"})
    assert explain(waiting, None, None, [waiting]) == E(
        False, "waiting for health", "waiting for Docker to report the container healthy; it is tested after that")
    healthy = reg(a, "critical", **{a.docker_health_check_id: "passing"})
    assert explain(healthy, None, None, [healthy]) == E(False, "awaiting tests",
                                                        "registered; awaiting its integration tests")
    b = inst(port=2)
    rb = reg(b, "critical")
    assert explain(rb, V(b.id, b.container_id, "t", TESTING, "testing with t"), None, [rb]) == E(
        False, "testing", "integration tests running (testing with t)")
    assert explain(rb, V(b.id, b.container_id, "t", ERROR, "image gone"), None, [rb]) == E(
        False, "tests error", "tests error: image gone; fix and redeploy, or `gatekeeper retest h:c2:8080`")
    assert explain(reg(b, "critical"), verdict(b), None, [rb]) == E(
        False, "gate closed", "tests passed but the gate is critical (no output); gatekeeper re-applies it")
    closed = RegisteredInstance(b, {b.gate_check_id: "critical"}, "testing with t")
    assert explain(closed, verdict(b), None, [closed]).why == \
        "tests passed but the gate is critical (testing with t); gatekeeper re-applies it"
    c, d = inst("v1", 3), inst("v1", 4)
    sick = reg(c, **{c.health_check_id: "critical", c.docker_health_check_id: "warning"})
    assert explain(sick, verdict(c), RoutingPolicy("demo", stable="v1"), [sick, reg(d)]) == E(
        False, "unhealthy", "passed its tests but a health check fails: docker-health warning, health critical")
    v1, v2 = inst("v1", 5), inst("v2", 6)
    regs = [reg(v1), reg(v2)]
    assert explain(regs[0], verdict(v1), RoutingPolicy("demo", stable="v1"), regs) == E(
        True, "stable", "the stable version (v1): every client not sent to a canary reaches it")
    zero = RoutingPolicy("demo", stable="v1", canary="v2", weight=0)
    assert explain(regs[1], verdict(v2), zero, regs) == E(
        True, "canary 0%", "the canary at 0%: only requests with X-Canary: always (or the cookie canary=always) "
                           "reach it")
    one = RoutingPolicy("demo", stable="v1", canary="v2", weight=1)
    assert explain(regs[1], verdict(v2), one, regs) == E(True, "canary 1%", "the canary: 1% of clients reach it")
    assert explain(regs[1], verdict(v2), None, regs) == E(True, "serving",
                                                          "no routing policy yet: every admitted instance serves")
    assert explain(regs[1], verdict(v2), RoutingPolicy("demo", stable="v1", previous="v2"), regs) == E(
        False, "previous", "the previous stable version, kept for `gatekeeper rollback demo`; v1 is stable")
    assert explain(regs[1], verdict(v2), RoutingPolicy("demo", stable="v1", aborted="v2"), regs) == E(
        False, "aborted", "the canary v2 was aborted; `gatekeeper canary demo v2` tries it again")
    assert explain(regs[1], verdict(v2), RoutingPolicy("demo", stable="v1", canary="v9"), regs) == E(
        False, "not routed", "admitted, but the policy routes other versions (stable v1, canary v9); "
                             "`gatekeeper canary demo v2` makes it a canary")
    assert E(True, "s", "w").to_dict() == {"serving": True, "state": "s", "why": "w"}


def test_the_proxy_answer_in_full():
    a, b = inst("v1", 1), inst("v2", 2)
    assert proxy_answer(0, None) == "404: no instance is registered, so the proxy has no route for it"
    assert proxy_answer(1, route_for("demo", [reg(a, "critical")], None)) == \
        '503 "no admitted instance": instances are registered but none passed its gate'
    assert proxy_answer(2, route_for("demo", [reg(a), reg(b)], None)) == "200 from every admitted version"
    canary = RoutingPolicy("demo", stable="v1", canary="v2", weight=5)
    assert proxy_answer(2, route_for("demo", [reg(a), reg(b)], canary)) == "200 from v1, canary v2 at 5%"
