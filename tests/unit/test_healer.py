"""The healer's decisions on fakes; tests/e2e/test_healing.py and test_swarm.py run it against
the real Engine, Consul and nginx."""
from catalog.model import Instance, RegisteredInstance
from gatekeeper.fleet.healer import Healer, HealSettings, failing_checks, limit, next_step

S = HealSettings(after=10, max_tries=3, backoff=5, settle=60, share=0.25)


def ri(n=1, health="passing", gate="passing", swarm="", policy="unless-stopped"):
    inst = Instance(id=f"h:web{n}:8080", service="demo", address="127.0.0.1", port=30000 + n, version="v1",
                    container_id=f"c{n}", container_name=f"web{n}", image="demo:v1", registered_by="r",
                    swarm_service=swarm, restart_policy=policy, node="h")
    return RegisteredInstance(inst, {inst.gate_check_id: gate, inst.health_check_id: health})


def test_restart_then_back_off_doubling_then_give_up():
    assert next_step(None, 100, S) == "restart"
    assert next_step({"tries": 1, "last": 100}, 104, S) == "wait"
    assert next_step({"tries": 1, "last": 100}, 105, S) == "restart"
    assert next_step({"tries": 2, "last": 100}, 109, S) == "wait"
    assert next_step({"tries": 2, "last": 100}, 110, S) == "restart"
    assert next_step({"tries": 3, "last": 100}, 500, S) == "give up"
    assert next_step({"tries": 3, "gave_up": True}, 500, S) == "gave up"


def test_only_the_instances_own_health_checks_count_and_the_share_is_at_least_one():
    assert failing_checks(ri(health="critical")) == ["h:web1:8080:health"]
    assert failing_checks(ri(health="passing", gate="critical")) == []
    assert (limit(1, 0.25), limit(4, 0.25), limit(8, 0.25), limit(10, 0.5)) == (1, 1, 2, 5)


class Healing:
    """The healing store over the bundle's `records`."""

    def __init__(self, store):
        self.store = store

    def all(self):
        return dict(self.store.records)

    def put(self, iid, record, *with_ops):
        if record is None:
            self.store.records.pop(iid, None)
        else:
            self.store.records[iid] = record
        for op in with_ops:                    # a container action written with the record
            self.store.actions.append(op)


class NodeRecords:
    """Gates and container actions, as the bundle's `gates` and `actions`; a registrator carries
    out what `carried_out` holds."""

    def __init__(self, store):
        self.store = store

    def set_gate(self, inst, passing, output):
        self.store.gates[inst.id] = (passing, output)

    def request_action(self, inst, action, reason, timeout=10):
        self.store.actions.append(self.action_op(inst, action, reason, timeout))

    def action_op(self, inst, action, reason, timeout=10):
        assert inst.node and reason
        return (inst.container_id, action)

    def withdraw_action(self, inst, action):
        asked = (inst.container_id, action)
        if asked in self.store.actions and asked not in self.store.carried_out:
            self.store.actions.remove(asked)
            return True
        return False


class History(list):
    """The history store: (event, details) in order."""

    def add(self, service, event, **details):
        self.append((event, details))


class Store:
    """The stores the healer takes, in memory."""

    def __init__(self):
        self.records, self.gates, self.history = {}, {}, History()
        self.actions = []                 # (container id, action) asked of the container's host
        self.carried_out = []             # of those, what the host's registrator has done
        self.healing, self.node_records = Healing(self), NodeRecords(self)


def failed_for_ten_seconds():
    """A healer (settings S) whose web1 has failed its health check for 10 s, so a restart was
    asked of its host: (healer, store, clock)."""
    now = [1000.0]
    h, store = healer(now)
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    now[0] = 1010.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    return h, store, now


def restarts(store):
    return sum(1 for _, action in store.actions if action == "restart")


def healer(now, **settings):
    store = Store()
    return Healer(store, HealSettings(**{**S.__dict__, **settings}), clock=lambda: now[0]), store


def test_an_admitted_instance_failing_for_the_set_time_is_restarted_once_and_recorded():
    now = [1000.0]
    h, store = healer(now)
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    assert store.actions == []                                # failing, but not for 10 s yet
    assert 0 < h.next_due() - __import__("time").monotonic() <= 10.1
    now[0] = 1010.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    assert store.actions == [("c1", "restart")]
    assert store.records["h:web1:8080"]["tries"] == 1 and store.history[0][0] == "healing: restarted"
    h.reconcile("demo", [ri(1, "critical", gate="critical"), ri(2)])      # the new run, under test
    assert store.actions == [("c1", "restart")]


def test_never_more_than_the_share_at_once_and_never_an_instance_that_was_not_admitted():
    now = [1000.0]
    h, store = healer(now)
    sick = [ri(n, "critical") for n in range(1, 5)] + [ri(9, "critical", gate="critical")]
    h.reconcile("demo", sick)
    now[0] = 1011.0
    h.reconcile("demo", sick)
    assert restarts(store) == 1                             # 5 instances x 0.25: one at a time
    assert all(cid != "c9" for cid, _ in store.actions)


def test_a_container_without_a_restart_policy_is_left_alone():
    now = [1000.0]
    h, store = healer(now)
    h.reconcile("demo", [ri(1, "critical", policy=""), ri(2)])
    now[0] = 1011.0
    h.reconcile("demo", [ri(1, "critical", policy=""), ri(2)])
    assert store.actions == [] and store.records == {}


def test_a_swarm_task_is_killed_for_swarm_to_replace():
    now = [1000.0]
    h, store = healer(now)
    h.reconcile("demo", [ri(1, "critical", swarm="demo"), ri(2, swarm="demo")])
    now[0] = 1010.0
    h.reconcile("demo", [ri(1, "critical", swarm="demo"), ri(2, swarm="demo")])
    assert store.actions == [("c1", "kill")]
    assert store.history[0][0] == "healing: replaced" and "asked h to kill the task" in store.history[0][1]["reason"]


def test_it_gives_up_after_the_tries_shuts_the_gate_saying_why_and_forgets_once_fixed():
    now = [1000.0]
    h, store = healer(now, max_tries=1)
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    now[0] = 1010.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])          # restart 1 of 1
    store.carried_out.append(("c1", "restart"))
    h.reconcile("demo", [ri(1, "passing"), ri(2)])           # its new run admitted ...
    h.reconcile("demo", [ri(1, "critical"), ri(2)])          # ... and failing again
    now[0] = 1020.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    record = store.records["h:web1:8080"]
    assert record["gave_up"] and "restarted 1 times" in record["reason"]
    assert store.gates["h:web1:8080"][0] is False and store.gates["h:web1:8080"][1] == record["reason"]
    assert restarts(store) == 1 and store.history[-1][0] == "healing: gave up"
    h.reconcile("demo", [ri(1, "passing", gate="critical"), ri(2)])
    assert "h:web1:8080" in store.records                    # healthy but not admitted: still given up
    h.reconcile("demo", [ri(1, "passing"), ri(2)])           # fixed by hand and admitted again
    assert store.records == {}


def test_restarts_count_from_zero_after_a_healthy_spell():
    now = [1000.0]
    h, store = healer(now)
    store.records["h:web1:8080"] = {"tries": 2, "last": 1000.0, "service": "demo"}
    now[0] = 1059.0
    h.reconcile("demo", [ri(1), ri(2)])
    assert "h:web1:8080" in store.records
    now[0] = 1060.0
    h.reconcile("demo", [ri(1), ri(2)])
    assert store.records == {}


def test_what_a_restart_records_and_tells():
    h, store, now = failed_for_ten_seconds()
    assert store.records["h:web1:8080"] == {"tries": 1, "last": 1010.0, "gave_up": False, "service": "demo",
                                            "reason": "restart 1 of 3: health critical"}
    assert store.history == [("healing: restarted", {
        "instance": "h:web1:8080", "version": "v1", "by": "gatekeeper (healer)",
        "reason": "health critical for 10 s: restart 1 of 3 asked of h; tested again before it takes traffic"})]


def test_a_second_failure_waits_out_its_back_off_and_the_daemon_is_woken_for_it():
    import time as clock
    now = [1000.0]
    h, store = healer(now)
    store.records["h:web1:8080"] = {"tries": 2, "last": 995.0, "gave_up": False, "service": "demo"}
    h.failing_since["h:web1:8080"] = 980.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])              # back-off 5 x 2 = 10 s from 995: not yet
    assert restarts(store) == 0
    assert h.waiting == {"h:web1:8080": 1005.0}
    now[0] = 1004.0
    assert 0.9 <= h.next_due() - clock.monotonic() <= 1.1          # woken when the back-off ends
    now[0] = 1005.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    assert restarts(store) == 1 and store.records["h:web1:8080"]["tries"] == 3
    assert "h:web1:8080" not in h.waiting
    assert h.next_due() is None                                    # nothing else falls due


def test_a_killed_tasks_action_lasts_while_its_replacement_is_in_the_gate():
    now = [1000.0]
    h, store = healer(now, share=0.5)
    tasks = [ri(n, swarm="demo") for n in range(1, 5)]
    sick = [ri(1, "critical", swarm="demo"), ri(2, "critical", swarm="demo")] + tasks[2:]
    h.reconcile("demo", sick)
    now[0] = 1010.0
    h.reconcile("demo", sick)
    assert store.actions == [("c1", "kill"), ("c2", "kill")]     # 4 x 0.5
    replacing = tasks[2:] + [ri(7, gate="critical", swarm="demo")]
    h.reconcile("demo", replacing)
    assert set(h.acting["demo"]) == {"h:web1:8080", "h:web2:8080"}    # the killed tasks are gone, still counted
    now[0] = 1131.0
    h.reconcile("demo", replacing)
    assert h.acting["demo"] == {}                            # two minutes at most
    h.acting["demo"] = {"h:web1:8080": 1130.0}
    h.reconcile("demo", tasks[2:] + [ri(7, swarm="demo")])
    assert h.acting["demo"] == {}                            # every instance admitted: done


def test_an_instance_healthy_and_admitted_again_ends_its_action():
    now = [1000.0]
    h, store = healer(now)
    h.acting["demo"] = {"h:web1:8080": 990.0}
    h.failing_since["h:web1:8080"], h.waiting["h:web1:8080"] = 980.0, 1005.0
    h.reconcile("demo", [ri(1), ri(2)])
    assert h.acting["demo"] == {} and "h:web1:8080" not in h.failing_since and "h:web1:8080" not in h.waiting


def test_what_it_remembers_goes_with_the_instance_and_records_ten_minutes_after():
    now = [1000.0]
    h, store = healer(now)
    h.reconcile("demo", [ri(1, "critical", policy=""), ri(2)])
    now[0] = 1011.0
    h.reconcile("demo", [ri(1, "critical", policy=""), ri(2)])
    assert "h:web1:8080" in h.told and "h:web1:8080" in h.failing_since
    store.records["h:web1:8080"] = {"tries": 3, "gave_up": True, "service": "demo"}
    store.records["h:other:8080"] = {"tries": 1, "service": "other"}
    h.records_read = (-1.0, {})
    h.reconcile("demo", [ri(2)])
    assert "h:web1:8080" not in h.told and "h:web1:8080" not in h.failing_since
    now[0] = 1610.0
    h.records_read = (-1.0, {})
    h.reconcile("demo", [ri(2)])
    assert "h:web1:8080" in store.records                    # 599 s gone
    now[0] = 1611.0
    h.records_read = (-1.0, {})
    h.reconcile("demo", [ri(2)])
    assert "h:web1:8080" not in store.records and "h:other:8080" in store.records


def test_records_are_read_once_per_pass_and_a_write_is_seen_at_once():
    now = [1000.0]
    h, store = healer(now)
    reads = []
    real = store.healing.all
    store.healing.all = lambda: reads.append(1) or real()
    h.reconcile("demo", [ri(1)])
    h.reconcile("other", [ri(2)])
    now[0] = 1000.5
    h.reconcile("demo", [ri(1)])
    assert len(reads) == 1
    now[0] = 1000.6
    h.reconcile("demo", [ri(1)])
    assert len(reads) == 2
    h._put("h:web1:8080", {"tries": 1, "service": "demo"})
    assert h._records(1000.6)["h:web1:8080"]["tries"] == 1
    h._put("h:web1:8080", None)
    assert "h:web1:8080" not in h._records(1000.6)
    now[0] = 999.0                                              # the clock went back: read again
    h.reconcile("demo", [ri(1)])
    assert len(reads) == 3


def test_the_give_up_record_and_message():
    now = [1000.0]
    h, store = healer(now, max_tries=2)
    store.records["h:web1:8080"] = {"tries": 2, "last": 900.0, "gave_up": False, "service": "demo"}
    h.failing_since["h:web1:8080"] = 980.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    reason = ("gave up healing: restarted 2 times, still failing (health critical); fix it and "
              "`docker restart web1`, then `gatekeeper retest h:web1:8080`")
    assert store.records["h:web1:8080"] == {"tries": 2, "last": 900.0, "gave_up": True, "reason": reason,
                                            "time": 1000.0, "service": "demo"}
    assert store.history[-1] == ("healing: gave up", {"instance": "h:web1:8080", "version": "v1",
                                                      "by": "gatekeeper (healer)", "reason": reason})
    h.reconcile("demo", [ri(1, "critical", gate="critical"), ri(2)])
    assert len(store.history) == 1 and store.actions == []


def test_only_the_restart_policies_that_bring_a_container_back_are_restarted():
    for policy, acted in [("always", True), ("unless-stopped", True), ("on-failure", True), ("", False), ("no", False)]:
        now = [1000.0]
        h, store = healer(now)
        h.reconcile("demo", [ri(1, "critical", policy=policy), ri(2)])
        now[0] = 1010.0
        h.reconcile("demo", [ri(1, "critical", policy=policy), ri(2)])
        assert store.actions == ([("c1", "restart")] if acted else []), policy


def test_a_restart_asked_is_taken_back_when_the_instance_heals_before_its_host_carries_it_out():
    h, store, now = failed_for_ten_seconds()
    assert store.actions == [("c1", "restart")]
    now[0] = 1015.0                                   # its registrator is down: the same run heals
    h.reconcile("demo", [ri(1), ri(2)])
    assert store.actions == []
    assert store.history[-1] == ("healing: restart taken back", {
        "instance": "h:web1:8080", "version": "v1", "by": "gatekeeper (healer)",
        "reason": "healthy again before h restarted it"})
    now[0] = 1020.0                                   # the same run stalls again: a second restart asked ...
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    now[0] = 1030.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    assert store.actions == [("c1", "restart")] and store.records["h:web1:8080"]["tries"] == 2
    now[0] = 1035.0                                   # ... and taken back too when it heals again
    h.reconcile("demo", [ri(1), ri(2)])
    assert store.actions == [] and [e for e, _ in store.history].count("healing: restart taken back") == 2


def test_a_restart_carried_out_is_not_taken_back_and_each_run_is_looked_at_once():
    h, store, now = failed_for_ten_seconds()
    store.carried_out.append(("c1", "restart"))
    calls = []
    withdraw = store.node_records.withdraw_action
    store.node_records.withdraw_action = lambda inst, action: calls.append(inst.id) or withdraw(inst, action)
    for t in (1015.0, 1020.0, 1025.0):               # the new run, tested again and admitted
        now[0] = t
        h.reconcile("demo", [ri(1), ri(2)])
    assert store.actions == [("c1", "restart")] and calls == ["h:web1:8080"]
    assert [e for e, _ in store.history] == ["healing: restarted"]


def test_taking_a_restart_back_is_tried_again_when_consul_did_not_answer():
    h, store, now = failed_for_ten_seconds()
    withdraw, failures = store.node_records.withdraw_action, [ConnectionError("Consul restarting")]

    def flaky(inst, action):
        if failures:
            raise failures.pop()
        return withdraw(inst, action)
    store.node_records.withdraw_action = flaky
    now[0] = 1015.0
    try:
        h.reconcile("demo", [ri(1), ri(2)])
    except ConnectionError:
        pass                                          # the daemon logs it and reconciles again
    assert store.actions == [("c1", "restart")]
    now[0] = 1016.0
    h.reconcile("demo", [ri(1), ri(2)])
    assert store.actions == []
