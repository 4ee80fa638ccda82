"""`gatekeeper wait`'s answer, the CD exit code: from the verdicts, the policy and what each live
proxy reports serving. The same behaviour on the real stack: tests/e2e/test_wait.py."""
from catalog.model import FAILED, PASSED, Instance, ProxyState, RegisteredInstance, RoutingPolicy, Verdict
from catalog.stores import ProxyStore
from gatekeeper.report.wait import WAIT_FAILED, WAIT_OK, WAIT_TIMEOUT, wait_for_version


def instance(version="v2", port=1):
    return Instance(id=f"h:c{port}:8080", service="demo", address="127.0.0.1", port=port, version=version,
                    container_id=f"c{port}", container_name=f"c{port}", image=f"demo:{version}", registered_by="r")


class Store:
    """What wait reads, held in plain fields, through fakes of the stores it takes (instances,
    verdicts, policies, proxies); waiting for a change returns at once (nothing blocks)."""

    def __init__(self, state=PASSED, policy=None, proxies=(), served=None):
        self.inst = instance()
        self.verdict_of = {self.inst.id: Verdict(self.inst.id, "c1", "demo-test", state, f"{state}: 3 tests", 1, 2)}
        self.the_policy = policy if policy is not None else RoutingPolicy("demo", stable="v2")
        self.the_proxies = list(proxies)
        self.served_by = served or {}
        self.proxy_reads = 0
        self.instances, self.verdicts = Instances(self), Verdicts(self)
        self.policies, self.proxies = Policies(self), Proxies(self)


class Instances:
    def __init__(self, store):
        self.store = store

    def of(self, service):
        if service != "demo":
            return []
        return [RegisteredInstance(self.store.inst, {self.store.inst.gate_check_id: "passing"})]


class Verdicts:
    def __init__(self, store):
        self.store = store

    def get(self, instance_id):
        return self.store.verdict_of.get(instance_id)


class Policies:
    def __init__(self, store):
        self.store = store

    def get(self, service):
        if isinstance(self.store.the_policy, Exception):
            raise self.store.the_policy
        return 1, self.store.the_policy if service == "demo" else None

    def wait_changes(self, index, wait):
        return index + 1


class Proxies(ProxyStore):
    """ProxyStore's own reading of the reports (`lagging`) over reports held in memory."""

    def __init__(self, store):
        self.store = store

    def all(self):
        self.store.proxy_reads += 1
        return self.store.the_proxies

    def served(self, proxy_id, service):
        return self.store.served_by.get(proxy_id) if service == "demo" else None

    def wait_served(self, index, wait):
        return index + 1


def run(store, timeout=0.3):
    lines = []
    code = wait_for_version(store, "demo", "v2", timeout, say=lines.append, longest_block=0.01)
    return code, lines


def test_passed_and_routed_with_no_proxy_announced_is_done():
    code, lines = run(Store())
    assert code == WAIT_OK and lines == ["demo v2: admitted and stable: passed: 3 tests"]


def test_failed_tests_end_the_wait_with_the_failure():
    code, lines = run(Store(state=FAILED))
    assert code == WAIT_FAILED and lines[-1] == "demo v2: tests failed: failed: 3 tests"


def test_a_live_proxy_that_does_not_serve_it_keeps_wait_waiting_and_is_named():
    store = Store(proxies=[ProxyState("proxy-reloader:a"), ProxyState("proxy-reloader:b")],
                  served={"proxy-reloader:a": {"stable": "v2"}, "proxy-reloader:b": {"stable": "v1"}})
    code, lines = run(store)
    assert code == WAIT_TIMEOUT
    assert "waiting for 1 proxy(ies) to serve it: proxy-reloader:b" in lines[0], lines
    store.served_by["proxy-reloader:b"] = {"stable": "v2"}
    assert run(store)[0] == WAIT_OK


def test_a_canary_counts_only_where_the_proxy_serves_it_as_the_canary():
    store = Store(policy=RoutingPolicy("demo", stable="v1", canary="v2", weight=10, mode="manual"),
                  proxies=[ProxyState("p")], served={"p": {"stable": "v2", "canary": ""}})
    assert run(store)[0] == WAIT_TIMEOUT
    store.served_by["p"] = {"stable": "v1", "canary": "v2"}
    code, lines = run(store)
    assert code == WAIT_OK and lines[-1] == "demo v2: admitted and canary (10%): passed: 3 tests"


def test_a_proxy_that_is_not_alive_is_named_at_once_and_not_waited_for():
    store = Store(proxies=[ProxyState("proxy-reloader:live"), ProxyState("proxy-reloader:gone", False, "TTL expired")],
                  served={"proxy-reloader:live": {"stable": "v2"}})
    code, lines = run(store, timeout=30)
    assert code == WAIT_OK
    assert lines[0].startswith("not waiting for proxy proxy-reloader:gone: it is not alive (TTL expired)")
    assert "consul services deregister -id=proxy-reloader:gone" in lines[0]
    assert lines[-1].endswith("(not confirmed by 1 proxy(ies) that are not alive: proxy-reloader:gone)")


def test_a_dead_proxy_is_named_once_however_long_wait_waits():
    store = Store(state="testing", proxies=[ProxyState("gone", False, "TTL expired")])
    code, lines = run(store)
    assert code == WAIT_TIMEOUT and store.proxy_reads > 2
    assert sum("not waiting for proxy gone" in line for line in lines) == 1, lines


class Unfolding(Store):
    """A deploy as wait sees it, one step further at each of wait's blocking reads: registered,
    awaiting tests, testing, passed, routed by the policy, served. Keeps which read it made
    (the policies' or the proxies') with the index it passed."""

    def __init__(self):
        super().__init__(policy=RoutingPolicy("demo", stable="v1"), proxies=[ProxyState("p")], served={"p": {"stable": "v1"}})
        self.step, self.reads, self.registered = 0, [], []
        self.verdict_of = {}
        self.instances.of = lambda service: list(self.registered) if service == "demo" else []
        self.policies.wait_changes = lambda index, wait: self.advance("policies", index)
        self.proxies.wait_served = lambda index, wait: self.advance("proxies", index)

    def advance(self, read, index):
        self.reads.append((read, index))
        if index == 0:               # the first read of each kind, before wait looks: its index only
            return 1
        self.step += 1
        iid = self.inst.id
        if self.step == 1:
            self.registered = [RegisteredInstance(self.inst, {self.inst.gate_check_id: "critical"})]
        elif self.step == 2:
            self.verdict_of[iid] = Verdict(iid, "c1", "demo-test", "testing", "testing with demo-test", 1, 0)
        elif self.step == 4:
            self.verdict_of[iid] = Verdict(iid, "c1", "demo-test", PASSED, "passed: 3 tests", 1, 2)
        elif self.step == 5:
            self.the_policy = RoutingPolicy("demo", stable="v2")
        elif self.step == 7:
            self.served_by["p"] = {"stable": "v2"}
        return index + 10


def test_wait_says_each_stage_once_and_follows_the_policies_then_the_proxies():
    store = Unfolding()
    code, lines = run(store, timeout=30)
    assert code == WAIT_OK
    assert lines == ["demo v2: waiting for an instance to be registered",
                     "demo v2: 1 instance(s) registered, awaiting tests",
                     "demo v2: 1 instance(s), tests running",
                     "demo v2: tests passed (passed: 3 tests); waiting for the routing policy",
                     "demo v2: routed by the policy; waiting for 1 proxy(ies) to serve it: p",
                     "demo v2: admitted and stable: passed: 3 tests"]
    # gatekeeper's changes until the policy routes the passed version, then the proxies'; each
    # read resumes from the index the previous one of its kind returned
    assert [r for r, _ in store.reads] == ["policies", "proxies"] + ["policies"] * 5 + ["proxies"] * 2, store.reads
    assert [i for r, i in store.reads if r == "policies"] == [0, 1, 11, 21, 31, 41]
    assert [i for r, i in store.reads if r == "proxies"] == [0, 1, 11]


def test_a_time_out_says_where_it_stood_and_a_dead_proxy_without_a_note_is_named_by_its_check():
    store = Store(state="testing", proxies=[ProxyState("gone", False, "")])
    code, lines = run(store, timeout=0.2)
    assert code == WAIT_TIMEOUT
    assert lines[0].startswith("not waiting for proxy gone: it is not alive (heartbeat check critical); ")
    assert lines[-1] == "demo v2: timed out after 0 s (demo v2: 1 instance(s), tests running)"


def test_every_lagging_and_every_dead_proxy_is_named():
    store = Store(proxies=[ProxyState("a"), ProxyState("b"), ProxyState("c"), ProxyState("x", False, "gone"),
                           ProxyState("y", False, "gone")],
                  served={"a": {"stable": "v2"}, "b": {"stable": "v1"}, "c": {}})
    code, lines = run(store)
    assert code == WAIT_TIMEOUT
    assert "demo v2: routed by the policy; waiting for 2 proxy(ies) to serve it: b, c" in lines, lines
    store.served_by.update(b={"stable": "v2"}, c={"stable": "v2"})
    code, lines = run(store)
    assert code == WAIT_OK
    assert lines[-1].endswith("(not confirmed by 2 proxy(ies) that are not alive: x, y)"), lines


def test_a_policy_that_cannot_be_read_is_waited_for_like_a_missing_one():
    from catalog.validation import InvalidValue
    store = Store(policy=InvalidValue("gatekeeper/policies/demo", "{not JSON", "a routing policy in JSON"))
    code, lines = run(store)
    assert code == WAIT_TIMEOUT
    assert lines[0] == "demo v2: tests passed (passed: 3 tests); waiting for the routing policy", lines
