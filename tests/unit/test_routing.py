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


def hosted(version, port, **kw):
    """An instance at its own path and Host, with strip_prefix, so every route field is visible."""
    from dataclasses import replace
    r = ri(version, port, **kw)
    return RegisteredInstance(replace(r.instance, proxy_path="/api/", proxy_host="api.test", strip_prefix=True),
                              r.checks)


def pool(version, *ports):
    return {"version": version, "servers": [f"127.0.0.1:{p}" for p in ports]}


def full(route):
    return route.to_dict()


def test_every_branch_gives_the_whole_route():
    """Each case compares the whole route (path, host, strip, pools, weight, note), not one field."""
    base = {"service": "demo", "path": "/api/", "host": "api.test", "strip_prefix": True, "canary": None,
            "answers_503": False, "note": "", "settings": {}}
    assert full(route_for("demo", [], None)) == {**base, "path": "/demo/", "host": "", "strip_prefix": False,
                                                   "stable": None, "answers_503": True}
    assert full(route_for("demo", [hosted("v1", 1, gate="critical")], None)) == {
        **base, "stable": None, "answers_503": True}
    assert full(route_for("demo", [hosted("v1", 1), hosted("v2", 2)], None)) == {
        **base, "stable": pool("*", 1, 2), "note": "no routing policy yet: every admitted instance serves"}
    assert full(route_for("demo", [hosted("v1", 1), hosted("v2", 2)], RoutingPolicy("demo", stable="v9"))) == {
        **base, "stable": pool("*", 1, 2),
        "note": "stable version v9 has no admitted instance: every admitted instance serves"}
    policy = RoutingPolicy("demo", stable="v1", canary="v2", weight=30)
    assert full(route_for("demo", [hosted("v1", 1), hosted("v2", 2), hosted("v3", 3)], policy)) == {
        **base, "stable": pool("v1", 1), "canary": {**pool("v2", 2), "weight": 30}}
    gone_canary = RoutingPolicy("demo", stable="v1", canary="v2", weight=30)
    assert full(route_for("demo", [hosted("v1", 1), hosted("v2", 2, gate="critical")], gone_canary)) == {
        **base, "stable": pool("v1", 1)}
    same = RoutingPolicy("demo", stable="v1", canary="v1", weight=30)
    assert full(route_for("demo", [hosted("v1", 1)], same)) == {**base, "stable": pool("v1", 1)}


def test_the_panic_policy_prefers_the_stable_version_and_says_so():
    sick = dict(health="critical")
    note = "panic: every instance fails a health check; serving those that passed their tests"
    both = [hosted("v1", 1, **sick), hosted("v2", 2, **sick), hosted("v3", 3, gate="critical")]
    route = route_for("demo", both, RoutingPolicy("demo", stable="v2"))
    assert (route.stable.version, route.stable.servers, route.note, route.path, route.host, route.strip_prefix) == \
        ("v2", (("127.0.0.1", 2),), note, "/api/", "api.test", True)
    route = route_for("demo", both, RoutingPolicy("demo", stable="v9"))
    assert (route.stable.version, route.stable.servers, route.note) == ("*", (("127.0.0.1", 1), ("127.0.0.1", 2)), note)
    route = route_for("demo", both, None)
    assert route.stable.version == "*" and route.canary is None and route.weight == 0
    assert route.stable.server_versions == ("v1", "v2")


def labelled(version, port, **fields):
    from dataclasses import replace
    r = ri(version, port)
    return RegisteredInstance(replace(r.instance, **fields), r.checks)


def test_the_stable_versions_labels_define_the_route_and_a_canarys_wait_for_its_promotion():
    from catalog.routing import pending_route_change
    stable = labelled("v1", 1, route_settings=(("timeout", "5s"),))
    canary = labelled("v2", 2, proxy_host="new.test", route_settings=(("retries", "0"), ("timeout", "10s")))
    policy = RoutingPolicy("demo", stable="v1", canary="v2", weight=10, mode="manual")
    for registered in ([stable, canary], [canary, stable]):             # whichever registered first
        route = route_for("demo", registered, policy)
        assert (route.host, route.settings) == ("", (("timeout", "5s"),))
        assert pending_route_change(registered, policy) == {
            "host": ("-", "new.test"), "retries": ("-", "0"), "timeout": ("5s", "10s")}
    promoted = RoutingPolicy("demo", stable="v2", previous="v1", mode="manual")
    route = route_for("demo", [stable, canary], promoted)
    assert (route.host, route.settings) == ("new.test", (("retries", "0"), ("timeout", "10s")))
    assert pending_route_change([stable, canary], promoted) == {}
    same = labelled("v2", 3, route_settings=(("timeout", "5s"),))
    assert pending_route_change([stable, same], policy) == {}
