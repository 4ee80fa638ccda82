"""`gatekeeper wait`'s answer, the CD exit code: from the verdicts, the policy and what each live
proxy reports serving. The same behaviour on the real stack: tests/e2e/test_wait.py."""
from catalog.model import FAILED, PASSED, Instance, ProxyState, RegisteredInstance, RoutingPolicy, Verdict
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
        return 1, self.store.the_policy

    def wait_changes(self, index, wait):
        return index + 1


class Proxies:
    def __init__(self, store):
        self.store = store

    def all(self):
        self.store.proxy_reads += 1
        return self.store.the_proxies

    def served(self, proxy_id, service):
        return self.store.served_by.get(proxy_id)

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
