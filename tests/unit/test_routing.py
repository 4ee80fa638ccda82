from catalog.model import Instance, RegisteredInstance, RoutingPolicy
from catalog.routing import route_for


def ri(version, port, gate="passing", health=None):
    inst = Instance(id=f"h:c{port}:8080", service="demo", address="127.0.0.1", port=port, version=version,
                    container_id=f"id{port}", container_name=f"c{port}", image=f"demo:{version}",
                    registered_by="r", proxy_path="/demo/")
    checks = {inst.gate_check_id: gate} if gate else {}
    if health:
        checks[inst.health_check_id] = health
    return RegisteredInstance(inst, checks)


def test_only_instances_whose_gate_exists_and_every_check_passes_are_routed():
    route = route_for("demo", [ri("v1", 1), ri("v1", 2, gate="critical"), ri("v1", 3, gate=None),
                               ri("v1", 4, health="critical")], None)
    assert route.stable.servers == (("127.0.0.1", 1),)


def test_no_admitted_instance_means_no_pool():
    route = route_for("demo", [ri("v1", 1, gate="critical"), ri("v1", 2, gate=None)], None)
    assert route.stable is None and route.path == "/demo/"


def test_panic_when_every_instance_fails_health_keeps_the_tested_ones():
    policy = RoutingPolicy(service="demo", stable="v2")
    route = route_for("demo", [ri("v2", 1, health="critical"), ri("v2", 2, health="critical"),
                               ri("v3", 3, gate="critical")], policy)
    assert route.stable.servers == (("127.0.0.1", 1), ("127.0.0.1", 2)) and route.note.startswith("panic")


def test_panic_never_overrides_a_closed_gate():
    route = route_for("demo", [ri("v1", 1, gate="critical", health="critical")], None)
    assert route.stable is None


def test_policy_selects_the_stable_version_and_a_canary():
    policy = RoutingPolicy(service="demo", stable="v2", canary="v3", weight=20)
    route = route_for("demo", [ri("v1", 1), ri("v2", 2), ri("v3", 3)], policy)
    assert route.stable.version == "v2" and route.stable.servers == (("127.0.0.1", 2),)
    assert route.canary.version == "v3" and route.weight == 20


def test_stable_without_admitted_instance_falls_back_to_every_admitted_one():
    policy = RoutingPolicy(service="demo", stable="v2")
    route = route_for("demo", [ri("v1", 1), ri("v2", 2, gate="critical")], policy)
    assert route.stable.servers == (("127.0.0.1", 1),) and "v2" in route.note
