"""The healer counts only the restarts it asked for: the try and the restart action are written
to Consul together, so a write Consul refuses (no leader for a moment) counts nothing, and the
next pass asks again. Real Consul, with its refusal of one write injected at the client."""
import pytest
from consul.base import ConsulException

from catalog.kv_layout import ACTIONS
from catalog.model import Instance, RegisteredInstance
from gatekeeper.fleet.healer import Healer, HealSettings


def unhealthy(unique):
    inst = Instance(id=f"heal:{unique}:8080", service=unique, address="127.0.0.1", port=32300, version="v1",
                    container_id=f"c{unique}", container_name=unique, image="demo:v1", registered_by="r",
                    restart_policy="unless-stopped", node=f"heal-{unique}", started="2026-12-06T00:00:00Z")
    return RegisteredInstance(inst, {inst.gate_check_id: "passing", inst.health_check_id: "critical"})


def test_a_restart_consul_refused_to_record_is_not_counted_and_is_asked_again(stores, unique, monkeypatch):
    ri = unhealthy(unique)
    consul, refused = stores.consul, []

    def touches_actions(keys):
        return any(k.startswith(ACTIONS) for k in keys)

    def refuse_once(write, keys_of):
        def call(*args, **kwargs):
            if not refused and touches_actions(keys_of(*args)):
                refused.append(args)
                raise ConsulException("500 No cluster leader")
            return write(*args, **kwargs)
        return call

    monkeypatch.setattr(consul, "kv_put", refuse_once(consul.kv_put, lambda key, *rest: [key]))
    monkeypatch.setattr(consul, "kv_txn", refuse_once(consul.kv_txn, lambda ops: [op[1] for op in ops]))
    now = [1000.0]
    healer = Healer(stores, HealSettings(after=10, max_tries=3, backoff=5, settle=60, share=1.0),
                    clock=lambda: now[0])
    try:
        healer.reconcile(unique, [ri])
        now[0] = 1010.0
        with pytest.raises(ConsulException):
            healer.reconcile(unique, [ri])
        assert refused, "the restart was written"
        record = stores.healing.get(ri.instance.id)
        assert not record or record.get("tries", 0) == 0, f"a restart never asked was counted: {record}"

        now[0] = 1011.0
        healer.reconcile(unique, [ri])
        assert stores.healing.get(ri.instance.id)["tries"] == 1
        assert consul.kv_keys(f"{ACTIONS}{ri.instance.node}/") == [f"{ACTIONS}{ri.instance.node}/{ri.instance.id}"]
    finally:
        stores.healing.put(ri.instance.id, None)
        consul.kv_delete_tree(f"{ACTIONS}{ri.instance.node}/")
