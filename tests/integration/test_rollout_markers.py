"""The Swarm gate markers a gatekeeper writes follow what Consul holds, not what this process
remembers: a gatekeeper started (or leading again) after another one wrote markers closes a task
that stopped serving and opens one that serves again. Real Consul: the policies and the marker
records each task's host applies (registrator.markers; tests/e2e/test_swarm.py runs it all)."""
from catalog.kv_layout import MARKERS
from catalog.model import Instance, RegisteredInstance, RoutingPolicy
from gatekeeper.fleet.rollout import CLOSED, OPEN, Rollout


class NoUpdate:
    """No Swarm update under way (the real adapter: tests/e2e/test_swarm.py)."""

    def service(self, name):
        return None


def task(service, n, version):
    inst = Instance(id=f"mk:{service}.{n}:8080", service=service, address="127.0.0.1", port=32200 + n,
                    version=version, container_id=f"c{service}{n}", container_name=f"{service}.{n}",
                    image=f"demo:{version}", registered_by="registrator@mk", swarm_service=service,
                    swarm_task=f"t{n}", gate_mirror=True, node=f"mk-{service}", started="2026-12-06T00:00:00Z")
    return RegisteredInstance(inst, {inst.gate_check_id: "passing"})


def marker(stores, ri):
    record = stores.node_records.markers(ri.instance.node)[1].get(ri.instance.id)
    return record.state if record else None


def test_markers_follow_consul_across_gatekeepers_and_leaderships(stores, unique):
    t = task(unique, 1, "v1")
    stores.policies.put(RoutingPolicy(unique, stable="v1"), cas=0)
    try:
        first = Rollout(stores, NoUpdate())
        first.reconcile(unique, [t])
        assert marker(stores, t) == OPEN

        # v2 made stable while no gatekeeper led: a new one closes v1's task
        index, _ = stores.policies.get(unique)
        stores.policies.put(RoutingPolicy(unique, stable="v2", previous="v1"), cas=index)
        second = Rollout(stores, NoUpdate())
        second.reconcile(unique, [t])
        assert marker(stores, t) == CLOSED, "a fresh gatekeeper left the marker of a task that no longer serves open"

        # v1 stable again while the second leads; the first, leading again, must open it
        index, _ = stores.policies.get(unique)
        stores.policies.put(RoutingPolicy(unique, stable="v1", previous="v2"), cas=index)
        first.leadership_lost()
        first.reconcile(unique, [t])
        assert marker(stores, t) == OPEN, "a leader again kept its own memory of the marker over Consul's"
    finally:
        stores.consul.kv_delete_tree(f"{MARKERS}{t.instance.node}/")
        stores.forget_service(unique)
