"""A canary whose route labels differ from the stable version's: the route keeps the stable
version's labels, and `gatekeeper status` and `why` show what changes once it is promoted (on a
real Consul; the rule itself: tests/unit/test_routing.py)."""
from __future__ import annotations

from catalog import route_settings
from catalog.model import Instance, RoutingPolicy
from gatekeeper.report.status import collect, collect_why, render_text, render_why


def register(stores, service, version, port, **labels):
    inst = Instance(id=f"pending:{service}-{version}:8080", service=service, address="127.0.0.1", port=port,
                    version=version, container_id=f"c{service}{version}", container_name=f"{service}-{version}",
                    image=f"demo:{version}", registered_by="registrator@pending",
                    route_settings=route_settings.from_labels(labels))
    stores.instances.register(inst)
    stores.instances.apply_gate(inst, True, "9/9 passed (set by the test)")
    return inst


def test_status_and_why_show_the_canarys_route_labels_waiting_for_its_promotion(stores, unique):
    made = [register(stores, unique, "v1", 30001, **{"proxy.timeout": "5s"}),
            register(stores, unique, "v2", 30002, **{"proxy.timeout": "10s", "proxy.body_size": "10m"})]
    try:
        index, _ = stores.policies.get(unique)
        assert stores.policies.put(RoutingPolicy(unique, stable="v1", canary="v2", weight=10, mode="manual"), index)
        data = collect(stores, unique)
        [s] = data["services"]
        assert s["route"]["settings"] == {"timeout": "5s"}
        assert s["pending_route_change"] == {"body_size": {"now": "-", "after_promotion": "10m"},
                                             "timeout": {"now": "5s", "after_promotion": "10s"}}
        line = ("canary v2's route labels differ, in effect once it is promoted: proxy.body_size - -> 10m; "
                "proxy.timeout 5s -> 10s")
        assert f"  pending  {line}" in render_text(data)
        assert f"  route: {line}" in render_why(collect_why(stores, unique))
        index, policy = stores.policies.get(unique)
        assert stores.policies.put(RoutingPolicy(unique, stable="v2", previous="v1", mode="manual"), index)
        [s] = collect(stores, unique)["services"]
        assert s["route"]["settings"] == {"body_size": "10m", "timeout": "10s"} and s["pending_route_change"] == {}
        assert "  pending  canary" not in render_text(collect(stores, unique))
    finally:
        for inst in made:
            stores.instances.deregister(inst.id)
        stores.forget_service(unique)
