"""The catalog mirror on a real Consul: per-service blocking queries see registrations, gate
changes, policy writes and removals, and report only the services that changed."""
import threading

from catalog.mirror import CatalogMirror
from catalog.model import Instance, RoutingPolicy
from catalog.validation import parse_policy
from testbed.processes import wait_until


def instance(service, n=0):
    return Instance(id=f"mirror:{service}-{n}:8080", service=service, address="127.0.0.1", port=30000 + n,
                    version="v1", container_id=f"c{n}", container_name=f"{service}-{n}", image="x:1",
                    registered_by="registrator@mirror")


def test_the_mirror_follows_instances_gates_policies_and_removals(consul_server, stores, unique):
    woken = threading.Event()
    other = unique + "-other"
    stores.instances.register(instance(other))
    mirror = CatalogMirror(consul_server.address, consul_server.management_token, woken.set, wait=5).start()
    try:
        wait_until(mirror.ready.is_set, 20, "the first full read")
        assert mirror.everything()[other][0][0].instance.id == instance(other).id

        inst = instance(unique)
        stores.instances.register(inst)
        wait_until(lambda: (mirror.take().get(unique) or (None,))[0], 10, "the new service seen")
        stores.instances.apply_gate(inst, True, "passed")
        changed = {}
        wait_until(lambda: changed.update(mirror.take()) or
                   (changed.get(unique) and changed[unique][0][0].admitted), 10, "the gate seen open")
        assert other not in changed                  # only what changed is read again

        index, _ = stores.policies.get(unique)
        stores.policies.put(RoutingPolicy(unique, stable="v1"), index)
        changed = {}
        wait_until(lambda: changed.update(mirror.take()) or (changed.get(unique) and changed[unique][1]), 10,
                   "the policy seen")
        assert parse_policy(changed[unique][1]).stable == "v1"

        stores.instances.deregister(inst.id)
        changed = {}
        wait_until(lambda: changed.update(mirror.take()) or (unique in changed and not changed[unique][0]), 10,
                   "the removal seen")
        assert woken.is_set()
    finally:
        mirror.stop()
        stores.instances.deregister(instance(other).id)
        stores.consul.kv_delete(f"gatekeeper/policies/{unique}")
