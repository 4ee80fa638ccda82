"""The stores of catalog.stores against a real Consul server: the behaviour the rest of the stack
relies on."""
import dataclasses
import json

import pytest

from catalog.model import PASSED, Instance, RoutingPolicy, Verdict
from catalog.validation import InvalidValue


def make(unique):
    return Instance(id=f"{unique}:web:8080", service=unique, address="127.0.0.1", port=31000,
                    version="v1", container_id="cid", container_name="web", image="demo:v1",
                    registered_by=f"registrator@{unique}", tests_image="demo-test:latest",
                    proxy_path=f"/{unique}/")


def test_a_new_instance_starts_with_a_critical_gate_and_is_not_admitted(stores, unique):
    inst = make(unique)
    stores.instances.register(inst)
    [ri] = stores.instances.of(unique)
    assert ri.gate_status == "critical" and not ri.admitted
    stores.instances.deregister(inst.id)


def test_gate_pass_admits_with_its_output_and_survives_reregistration(stores, unique):
    inst = make(unique)
    stores.instances.register(inst)
    stores.instances.apply_gate(inst, True, "9/9 passed in 0.2 s")
    [ri] = stores.instances.of(unique)
    assert ri.admitted and ri.gate_output == "9/9 passed in 0.2 s"
    stores.instances.register(inst)                     # a registrator resync that does re-register
    [ri] = stores.instances.of(unique)
    assert ri.admitted, "re-registering the same instance must not reset its gate"
    stores.instances.apply_gate(inst, False, "failed: 0/9")
    assert not stores.instances.of(unique)[0].admitted
    [check] = [c for c in stores.consul.service_checks(unique) if c["CheckID"] == inst.gate_check_id]
    assert "awaiting" not in check["Notes"] and "demo-test:latest" in check["Notes"], \
        "the UI shows Notes beside every result: they must not contradict a pass or a failure"
    stores.instances.deregister(inst.id)


def test_blocking_query_returns_on_a_check_change(stores, unique):
    inst = make(unique)
    stores.instances.register(inst)
    index, _ = stores.instances.wait_checks(0, 1)
    stores.instances.apply_gate(inst, True, "ok")
    new_index, checks = stores.instances.wait_checks(index, 5)
    assert new_index > index
    assert any(c["CheckID"] == inst.gate_check_id and c["Status"] == "passing" for c in checks)
    stores.instances.deregister(inst.id)


def test_verdict_roundtrip(stores, unique):
    v = Verdict(f"{unique}:web:8080", "cid", "demo-test:latest", PASSED, "9/9 passed", 10.0, 11.5, "tail")
    stores.verdicts.put(v)
    assert stores.verdicts.get(v.instance_id) == v
    assert json.loads(stores.consul.kv_get("gatekeeper/verdicts/" + v.instance_id)[1])["duration"] == 1.5


def test_policy_check_and_set_refuses_a_stale_writer(stores, unique):
    cas, none = stores.policies.get(unique)
    assert none is None and cas == 0
    assert stores.policies.put(RoutingPolicy(service=unique, stable="v1"), cas)
    cas1, p1 = stores.policies.get(unique)
    assert stores.policies.put(RoutingPolicy(service=unique, stable="v2"), cas1)
    assert not stores.policies.put(RoutingPolicy(service=unique, stable="v3"), cas1), "stale CAS must lose"
    assert stores.policies.get(unique)[1].stable == "v2"


def test_a_malformed_policy_is_reported_not_crashed_on(stores, unique):
    stores.consul.kv_put(f"gatekeeper/policies/{unique}", "{not json")
    with pytest.raises(InvalidValue):
        stores.policies.get(unique)
    stores.consul.kv_put(f"gatekeeper/policies/{unique}", json.dumps({"service": unique, "weight": 500}))
    with pytest.raises(InvalidValue) as err:
        stores.policies.get(unique)
    assert "weight" in str(err.value)
    stores.consul.kv_delete(f"gatekeeper/policies/{unique}")      # every proxy of the test session reports it


def test_a_verdict_written_by_hand_that_does_not_parse_is_ignored(stores, unique):
    stores.consul.kv_put(f"gatekeeper/verdicts/{unique}:web:8080", "passed, trust me")
    assert stores.verdicts.get(f"{unique}:web:8080") is None          # so the instance is tested again


def test_gates_and_actions_are_kept_under_the_instances_node_and_forgotten_with_its_verdict(stores, unique):
    inst = make(unique)
    stores.instances.register(inst)
    [ri] = stores.instances.of(unique)
    node = ri.instance.node
    assert node == stores.instances.node_name(), "an instance read from the catalog knows its node"
    stores.verdicts.put(Verdict(inst.id, inst.container_id, "t", PASSED, "9/9 passed", 1, 2))
    stores.node_records.set_gate(ri.instance, True, "9/9 passed")
    stores.node_records.request_action(ri.instance, "stop", "drained after v2 was promoted", timeout=7)
    _, gates = stores.node_records.gates(node)
    _, actions = stores.node_records.actions(node)
    assert gates[inst.id].passing and gates[inst.id].applies_to(inst)
    act = actions[inst.id]
    assert (act.action, act.container_id, act.reason, act.timeout) == ("stop", "cid", "drained after v2 was promoted", 7)
    stores.consul.kv_put(f"gatekeeper/actions/{node}/{unique}:damaged", '{"action": "format-disk", "container_id": "x"}')
    records = stores.node_records.actions(node)[1]        # other tests' stacks share this agent's node
    assert inst.id in records and f"{unique}:damaged" not in records, "an unknown action is ignored, not carried out"
    stores.forget_instance(inst.id)
    assert inst.id not in stores.node_records.gates(node)[1] and inst.id not in stores.node_records.actions(node)[1]
    assert stores.verdicts.get(inst.id) is None
    stores.consul.kv_delete(f"gatekeeper/actions/{node}/{unique}:damaged")
    stores.instances.deregister(inst.id)


def test_an_action_is_taken_back_only_for_the_run_and_the_action_it_names(stores, unique):
    inst = make(unique)
    stores.instances.register(inst)
    [ri] = stores.instances.of(unique)
    run = dataclasses.replace(ri.instance, started="2026-11-29T08:00:00.1Z")
    stores.node_records.request_action(run, "restart", "healing: restart 1 of 3")
    assert not stores.node_records.withdraw_action(dataclasses.replace(run, started="2026-11-29T08:01:00.2Z"), "restart"), \
        "a new run of the container does not take back what was asked for the old one"
    assert not stores.node_records.withdraw_action(run, "stop")
    assert run.id in stores.node_records.actions(run.node)[1]
    assert stores.node_records.withdraw_action(run, "restart")
    assert run.id not in stores.node_records.actions(run.node)[1]
    assert not stores.node_records.withdraw_action(run, "restart"), "nothing left to take back"
    stores.instances.deregister(inst.id)


def test_every_verdict_comes_in_one_read_and_an_unreadable_one_is_left_out(stores, unique):
    ids = [f"{unique}:web{n}:8080" for n in range(3)]
    for n, iid in enumerate(ids):
        stores.verdicts.put(Verdict(iid, f"c{n}", "t", PASSED, f"{n}/9 passed", 1, 2))
    forged = {f"{unique}:forged{n}:8080": raw for n, raw in enumerate(("passed, trust me", '"passed"', "7", "[]", "{}"))}
    for iid, raw in forged.items():
        stores.consul.kv_put(f"gatekeeper/verdicts/{iid}", raw)
    every = stores.verdicts.all()
    assert {iid: every[iid].summary for iid in ids} == {iid: f"{n}/9 passed" for n, iid in enumerate(ids)}
    assert not set(forged) & set(every), "so those instances are tested again"
    assert all(stores.verdicts.get(iid) is None for iid in forged), "and read alone, the same"
    for iid in ids + list(forged):
        stores.verdicts.forget(iid)


def test_many_gates_written_at_once_each_under_its_node_past_one_transactions_limit(stores, unique):
    node = stores.instances.node_name()
    insts = [dataclasses.replace(make(unique), id=f"{unique}:web{n}:8080", container_id=f"c{n}", node=node)
             for n in range(150)]                     # more than the 64 operations of one transaction
    stores.node_records.set_gates([(i, n % 2 == 0, f"decision {n}") for n, i in enumerate(insts)])
    gates = stores.node_records.gates(node)[1]
    for n, i in enumerate(insts):
        assert gates[i.id].passing == (n % 2 == 0) and gates[i.id].output == f"decision {n}" and gates[i.id].applies_to(i)
    with pytest.raises(ValueError, match="node is unknown"):
        stores.node_records.set_gates([(make(unique), True, "no node")])
    for i in insts:
        stores.consul.kv_delete(f"gatekeeper/gates/{node}/{i.id}")


def test_a_pass_reads_each_prefix_once_and_sees_every_write_made_through_its_client(stores, consul_server, unique):
    import threading
    from catalog.stores import Stores
    other = Stores.connect(consul_server.address, token=consul_server.management_token, timeout=5)
    stores.policies.put(RoutingPolicy(service=unique, stable="v1"), 0)
    with stores.consul.reads_of_one_pass(("gatekeeper/policies/",)):
        index, policy = stores.policies.get(unique)
        assert policy.stable == "v1" and index > 0
        assert stores.policies.get(f"{unique}-none") == (0, None), "absent at the read: absent"
        other.policies.put(RoutingPolicy(service=unique, stable="v2"), index)   # another process
        assert stores.policies.get(unique)[1].stable == "v1", "one read for the whole pass"
        assert not stores.policies.put(RoutingPolicy(service=unique, stable="v3"), index), "its index is stale"
        index, policy = stores.policies.get(unique)                              # tried through it: read again
        assert policy.stable == "v2"
        worker = threading.Thread(target=stores.policies.put, args=(RoutingPolicy(service=unique, stable="v4"), index))
        worker.start()
        worker.join()
        assert stores.policies.get(unique)[1].stable == "v4", "another thread's write through the same client"
    other.policies.put(RoutingPolicy(service=unique, stable="v5"), stores.policies.get(unique)[0])
    assert stores.policies.get(unique)[1].stable == "v5", "after the pass, every read goes to Consul"
    stores.forget_service(unique)


def test_a_write_made_while_a_pass_reads_its_snapshot_is_seen_by_the_pass(stores, unique, monkeypatch):
    """The daemon's pass reads its prefixes one after another while a test's worker thread may
    write (a canary set with its analysis, a rollback finished): a write landing between those
    reads must not be answered from the snapshot's older value (it was: an analysis started
    twice, a rollback recorded twice)."""
    import threading
    stores.policies.put(RoutingPolicy(service=unique, stable="v1"), 0)
    kv = stores.consul._c.kv
    read = kv.get

    def get(key, **kwargs):
        answer = read(key, **kwargs)
        if kwargs.get("recurse") and key == "gatekeeper/policies/":      # the first prefix is read:
            def write():                                                # a worker writes before the next
                stores.policies.put(RoutingPolicy(service=unique, stable="v2"), stores.policies.get(unique)[0])
            worker = threading.Thread(target=write)
            worker.start()
            worker.join()
        return answer

    monkeypatch.setattr(kv, "get", get)
    with stores.consul.reads_of_one_pass(("gatekeeper/policies/", "gatekeeper/rollbacks/")):
        assert stores.policies.get(unique)[1].stable == "v2"
    monkeypatch.undo()
    assert stores.policies.get(unique)[1].stable == "v2"
    stores.forget_service(unique)


def test_every_instance_in_a_few_reads_is_what_each_services_own_read_says(stores, consul_server, unique):
    """all() reads each node's services and every check at once; of() one service's health."""
    import requests
    local = make(unique)
    stores.instances.register(local)
    stores.instances.apply_gate(local, True, "9/9 passed")
    remote = dataclasses.replace(make(unique), id=f"{unique}:far:8080", container_id="far", container_name="far")
    body = {"Node": f"{unique}-host", "Address": "127.0.0.2",
            "Service": {"ID": remote.id, "Service": remote.service, "Address": remote.address, "Port": remote.port,
                        "Tags": remote.all_tags(), "Meta": remote.meta()},
            "Checks": [{"CheckID": remote.gate_check_id, "Name": "gate", "ServiceID": remote.id, "Status": "critical",
                        "Output": "testing"},
                       {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}]}
    requests.put(f"http://{consul_server.address}/v1/catalog/register", json=body, timeout=5,
                 headers=consul_server.headers).raise_for_status()
    try:
        every = stores.instances.all()
        assert every[unique] == stores.instances.of(unique)
        by_id = {ri.instance.id: ri for ri in every[unique]}
        assert by_id[local.id].admitted and by_id[local.id].gate_output == "9/9 passed"
        assert by_id[remote.id].instance.node == f"{unique}-host" and by_id[remote.id].gate_status == "critical"
        assert list(every) == sorted(every)
    finally:
        requests.put(f"http://{consul_server.address}/v1/catalog/deregister", json={"Node": f"{unique}-host"},
                     timeout=5, headers=consul_server.headers).raise_for_status()
        stores.instances.deregister(local.id)


def test_actions_for_instances_long_gone_are_forgotten_and_no_other(stores, unique):
    """A drained container removed versions after its verdict was forgotten, a rollback's start
    given up: their records would stay in KV for ever, read by every registrator of the node."""
    from catalog.kv_layout import ACTIONS
    from catalog.model import ContainerAction
    import time

    inst = make(unique)
    stores.instances.register(inst)
    [ri] = stores.instances.of(unique)
    node, old = f"{unique}-node", time.time() - 3600

    def put(iid, written):
        stores.consul.kv_put(f"{ACTIONS}{node}/{iid}",
                             ContainerAction("remove", "c", "t0", "drained 3 versions ago", 10, written).to_json())

    put(f"{unique}:removed:8080", old)               # gone long ago: forgotten
    put(f"{unique}:fresh:8080", time.time())        # gone, but asked just now: its host may not have read it yet
    put(inst.id, old)                               # still registered: kept
    stores.consul.kv_put(f"{ACTIONS}{node}/{unique}:damaged:8080", "{not json")
    try:
        registered = {r.instance.id for rs in stores.instances.all().values() for r in rs}
        removed = stores.node_records.forget_old_actions(registered, 900)
        mine = {k for k in removed if k.startswith(f"{ACTIONS}{node}/")}
        assert mine == {f"{ACTIONS}{node}/{unique}:removed:8080", f"{ACTIONS}{node}/{unique}:damaged:8080"}
        assert set(stores.consul.kv_keys(f"{ACTIONS}{node}/")) == {f"{ACTIONS}{node}/{unique}:fresh:8080",
                                                                   f"{ACTIONS}{node}/{inst.id}"}
    finally:
        stores.consul.kv_delete_tree(f"{ACTIONS}{node}/")
        stores.instances.deregister(inst.id)


def test_many_instances_are_forgotten_at_once_on_every_node_and_no_other(stores, unique):
    from catalog.kv_layout import ACTIONS, GATES, MARKERS

    def node_keys():
        return {k for prefix in (GATES, MARKERS, ACTIONS) for k in stores.consul.kv_keys(prefix) if unique in k}

    made = [dataclasses.replace(make(unique), id=f"{unique}:web{n}:8080", node=f"{unique}-n{n % 2}",
                                container_id=f"c{n}") for n in range(3)]
    for inst in made:
        stores.verdicts.put(Verdict(inst.id, inst.container_id, "t", PASSED, "9/9 passed", 1, 2))
        stores.node_records.set_gate(inst, True, "9/9 passed")
        stores.node_records.set_marker(inst, "open")
        stores.node_records.request_action(inst, "stop", "drained")
    try:
        stores.forget_instances([made[0].id, made[1].id])
        assert node_keys() == {f"{prefix}{made[2].node}/{made[2].id}" for prefix in (GATES, MARKERS, ACTIONS)}
        assert stores.verdicts.get(made[0].id) is None and stores.verdicts.get(made[2].id) is not None
    finally:
        stores.forget_instances([inst.id for inst in made])
    assert node_keys() == set()


def test_the_services_a_rollback_waits_for_are_listed_until_it_is_cleared(stores, unique):
    from catalog.model import RollbackRequest

    request = RollbackRequest("v1", "v2", ({"name": "web", "node": "h1", "id": "c1", "instance": "h1:web:8080"},))
    assert stores.policies.put_rollback(unique, request, cas=0)
    try:
        assert unique in stores.policies.rollbacks_waiting()
    finally:
        stores.policies.clear_rollback(unique)
    assert unique not in stores.policies.rollbacks_waiting()
