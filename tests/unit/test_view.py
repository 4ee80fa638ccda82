"""What the proxy routes from Consul's raw data: values re-checked, bad services left out and
named, conflicts resolved by name. The real-stack twin: tests/e2e/test_proxy_reloader.py."""
from dataclasses import replace

from catalog.model import Instance, RegisteredInstance, RoutingPolicy
from proxy_reloader.view import build_view, route_of, without_conflicts


def reg(service="demo", port=1, **kw):
    inst = Instance(id=f"h:{service}{port}:8080", service=service, address="127.0.0.1", port=port, version="v1",
                    container_id=f"c{port}", container_name=f"{service}{port}", image="demo:v1", registered_by="r",
                    proxy_path=f"/{service}/")
    inst = replace(inst, **kw)
    return RegisteredInstance(inst, {inst.gate_check_id: "passing"})


def test_a_service_with_no_instance_has_no_route_and_no_error():
    assert route_of("demo", [], None) == (None, None)
    assert route_of("demo", None, '{"service": "demo", "stable": "v1"}') == (None, None)


def test_a_valid_service_gets_its_route_with_its_policy():
    route, error = route_of("demo", [reg()], '{"service": "demo", "stable": "v1"}')
    assert error is None and route.stable.version == "v1" and route.note == ""
    route, error = route_of("demo", [reg()], None)
    assert error is None and route.stable.version == "*"


def test_a_bad_policy_or_instance_leaves_the_service_out_and_says_why():
    assert route_of("demo", [reg()], "{not json") == (
        None, "gatekeeper/policies/demo: policy='{not json' is invalid: a JSON routing policy")
    route, error = route_of("demo", [reg()], '{"service": "demo", "weight": 500}')
    assert route is None and error.startswith("gatekeeper/policies/demo: weight=500 is invalid")
    for bad, field in [(dict(address="1.2.3.4;"), "address"), (dict(port=0), "port"), (dict(version="v 1"), "version"),
                       (dict(proxy_path="/a b/"), "proxy_path"), (dict(proxy_host="A_B"), "proxy_host"),
                       (dict(service="De mo"), "service")]:
        route, error = route_of("demo", [reg(), reg(**{"port": 2, **bad})], None)
        assert route is None and error.startswith(f"{field}="), (bad, error)


def test_two_services_on_one_host_and_path_the_first_by_name_keeps_it():
    routes = {name: route_of(name, [reg(name, proxy_path="/shared/")], None)[0] for name in ("b", "a", "c")}
    routes["d"] = route_of("d", [reg("d", proxy_path="/shared/", proxy_host="d.test")], None)[0]
    errors = {}
    kept = without_conflicts(routes, errors)
    assert [r.service for r in kept] == ["a", "d"]
    assert errors == {"b": "path /shared/ is already routed to a", "c": "path /shared/ is already routed to a"}


def test_a_route_with_admitted_instances_keeps_its_host_and_path_from_one_with_none_whatever_the_names():
    serving = route_of("b", [reg("b", proxy_path="/shared/", proxy_host="shop.test")], None)[0]
    waiting = RegisteredInstance(reg("a", proxy_path="/shared/", proxy_host="*.shop.test,shop.test").instance,
                                 {"h:a1:8080:gate": "critical"})
    refused = route_of("a", [waiting], None)[0]
    assert refused.stable is None
    errors = {}
    assert [r.service for r in without_conflicts({"a": refused, "b": serving}, errors)] == ["b"]
    assert errors == {"a": "shop.test/shared/ is already routed to b"}


def test_build_view_reads_everything_once_and_reports_each_bad_service():
    class Instances:
        def all(self):
            return {"good": [reg("good")], "bad": [reg("bad", port=0)], "pol": [reg("pol")]}

    class Policies:
        def get(self, service):
            if service == "pol":
                from catalog.validation import InvalidValue
                raise InvalidValue("weight", 500, "a whole number from 0 to 100")
            return 0, RoutingPolicy(service, stable="v1")
    view = build_view(Instances(), Policies())
    assert [r.service for r in view.routes] == ["good"] and view.routes[0].stable.version == "v1"
    assert set(view.errors) == {"bad", "pol"} and view.errors["pol"].startswith("weight=500")
