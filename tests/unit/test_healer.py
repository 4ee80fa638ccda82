"""The healer's decisions on fakes; tests/e2e/test_healing.py and test_swarm.py run it against
the real Engine, Consul and nginx."""
from catalog.model import Instance, RegisteredInstance
from gatekeeper.healer import Healer, HealSettings, failing_checks, limit, next_step

S = HealSettings(after=10, max_tries=3, backoff=5, settle=60, share=0.25)


def ri(n=1, health="passing", gate="passing", swarm=""):
    inst = Instance(id=f"h:web{n}:8080", service="demo", address="127.0.0.1", port=30000 + n, version="v1",
                    container_id=f"c{n}", container_name=f"web{n}", image="demo:v1", registered_by="r",
                    swarm_service=swarm)
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


class Store:
    def __init__(self):
        self.records, self.gates, self.history = {}, {}, []

    def healing_records(self):
        return dict(self.records)

    def put_healing(self, iid, record):
        if record is None:
            self.records.pop(iid, None)
        else:
            self.records[iid] = record

    def set_gate(self, inst, passing, output):
        self.gates[inst.id] = (passing, output)

    def add_history(self, service, event, **details):
        self.history.append((event, details))


class Container:
    def __init__(self, log):
        self.log = log

    def restart(self, timeout):
        self.log.append("restart")


class Docker:
    def __init__(self, policy="unless-stopped"):
        self.policy, self.log = policy, []
        self.api = self
        self.containers = self

    def inspect_container(self, cid):
        return {"HostConfig": {"RestartPolicy": {"Name": self.policy}}}

    def get(self, cid):
        self.log.append(cid)
        return Container(self.log)


class Swarm:
    def __init__(self):
        self.killed = []

    def replace_task(self, cid):
        self.killed.append(cid)
        return True


def healer(now, policy="unless-stopped", **settings):
    store, docker, swarm = Store(), Docker(policy), Swarm()
    h = Healer(store, docker, swarm, HealSettings(**{**S.__dict__, **settings}), clock=lambda: now[0])
    return h, store, docker, swarm


def test_an_admitted_instance_failing_for_the_set_time_is_restarted_once_and_recorded():
    now = [1000.0]
    h, store, docker, _ = healer(now)
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    assert docker.log == []                                   # failing, but not for 10 s yet
    assert 0 < h.next_due() - __import__("time").monotonic() <= 10.1
    now[0] = 1010.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    assert docker.log == ["c1", "restart"]
    assert store.records["h:web1:8080"]["tries"] == 1 and store.history[0][0] == "healing: restarted"
    h.reconcile("demo", [ri(1, "critical", gate="critical"), ri(2)])      # the new run, under test
    assert docker.log == ["c1", "restart"]


def test_never_more_than_the_share_at_once_and_never_an_instance_that_was_not_admitted():
    now = [1000.0]
    h, store, docker, _ = healer(now)
    sick = [ri(n, "critical") for n in range(1, 5)] + [ri(9, "critical", gate="critical")]
    h.reconcile("demo", sick)
    now[0] = 1011.0
    h.reconcile("demo", sick)
    assert docker.log.count("restart") == 1                 # 5 instances x 0.25: one at a time
    assert "c9" not in docker.log


def test_a_container_without_a_restart_policy_is_left_alone():
    now = [1000.0]
    h, store, docker, _ = healer(now, policy="no")
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    now[0] = 1011.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    assert "restart" not in docker.log and store.records == {}


def test_a_swarm_task_is_killed_for_swarm_to_replace():
    now = [1000.0]
    h, store, docker, swarm = healer(now)
    h.reconcile("demo", [ri(1, "critical", swarm="demo"), ri(2, swarm="demo")])
    now[0] = 1010.0
    h.reconcile("demo", [ri(1, "critical", swarm="demo"), ri(2, swarm="demo")])
    assert swarm.killed == ["c1"] and "restart" not in docker.log
    assert store.history[0][0] == "healing: replaced"


def test_it_gives_up_after_the_tries_shuts_the_gate_saying_why_and_forgets_once_fixed():
    now = [1000.0]
    h, store, docker, _ = healer(now, max_tries=1)
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    now[0] = 1010.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])          # restart 1 of 1
    h.reconcile("demo", [ri(1, "passing"), ri(2)])           # its new run admitted ...
    h.reconcile("demo", [ri(1, "critical"), ri(2)])          # ... and failing again
    now[0] = 1020.0
    h.reconcile("demo", [ri(1, "critical"), ri(2)])
    record = store.records["h:web1:8080"]
    assert record["gave_up"] and "restarted 1 times" in record["reason"]
    assert store.gates["h:web1:8080"][0] is False and store.gates["h:web1:8080"][1] == record["reason"]
    assert docker.log.count("restart") == 1 and store.history[-1][0] == "healing: gave up"
    h.reconcile("demo", [ri(1, "passing", gate="critical"), ri(2)])
    assert "h:web1:8080" in store.records                    # healthy but not admitted: still given up
    h.reconcile("demo", [ri(1, "passing"), ri(2)])           # fixed by hand and admitted again
    assert store.records == {}


def test_restarts_count_from_zero_after_a_healthy_spell():
    now = [1000.0]
    h, store, docker, _ = healer(now)
    store.records["h:web1:8080"] = {"tries": 2, "last": 1000.0, "service": "demo"}
    now[0] = 1059.0
    h.reconcile("demo", [ri(1), ri(2)])
    assert "h:web1:8080" in store.records
    now[0] = 1060.0
    h.reconcile("demo", [ri(1), ri(2)])
    assert store.records == {}
