"""A container the drain stopped and its engine started again (restart policy `always`, a host's
reboot) passes its tests: admitted, but its old version does not take production back by
itself. Real Consul: the policy, the history the drain wrote and the promoter reading it
(tests/faults/test_engine_restart.py restarts a real engine)."""
from catalog.model import Instance, RoutingPolicy
from gatekeeper.promotion.promoter import Promoter


def test_a_drained_container_back_after_an_engine_restart_is_not_promoted(stores, unique):
    stores.policies.put(RoutingPolicy(unique, stable="v2", previous="v1"), cas=0)
    stores.history.add(unique, "drained", version="v1", stable="v2", by="gatekeeper", containers=[
        {"name": f"{unique}-v1", "node": "h1", "id": f"c{unique}", "started": "t1", "instance": f"h1:{unique}:8080"}])
    back = Instance(id=f"h1:{unique}:8080", service=unique, address="127.0.0.1", port=32400, version="v1",
                    container_id=f"c{unique}", container_name=f"{unique}-v1", image="demo:v1", registered_by="r",
                    started="t2", node="h1")
    try:
        Promoter(stores, stop_old=False).admitted(back)
        policy = stores.policies.get(unique)[1]
        assert (policy.stable, policy.canary) == ("v2", ""), "the drained version took production back"
        last = stores.history.of(unique)[-1]
        assert last["event"] == "drained container back" and f"gatekeeper rollback {unique}" in last["reason"]
    finally:
        stores.forget_service(unique)
