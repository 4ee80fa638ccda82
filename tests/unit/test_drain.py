"""What a drain after a promotion stops: the instances of other versions that were there when
the version was promoted, never a newer one that passed its tests meanwhile; and when: only once
every live proxy serves the new version (the real-stack twins: tests/e2e/test_zero_reload.py,
whose deploys follow each other faster than the drain, and tests/e2e/test_drain.py, whose proxy
is held still)."""
import time

import requests

from catalog.model import PASSED, Instance, RegisteredInstance, RoutingPolicy, Verdict
from gatekeeper.promotion.promoter import Promoter


def registered(version):
    inst = Instance(id=f"h:{version}:8080", service="demo", address="127.0.0.1", port=1, version=version,
                    container_id=f"c-{version}", container_name=version, image=f"demo:{version}", registered_by="r")
    return RegisteredInstance(inst, {inst.gate_check_id: "passing"})


class Store:
    """The stores a drain reads and writes, in memory: the registered instances (`listed`), the
    policy (`pol`), a passed verdict for each instance, and the containers asked to stop."""

    def __init__(self, versions, stable):
        self.listed = [registered(v) for v in versions]
        self.pol = RoutingPolicy("demo", stable=stable)
        self.stopped = []                       # containers whose host was asked to stop them
        self.lagging = []                       # the live proxies that do not serve the stable version yet
        self.unreachable = 0                    # how many reads of the proxies' reports fail first
        self.events = []
        self.node_records, self.instances = NodeRecords(self), Instances(self)
        self.proxies, self.history = Proxies(self), History(self)
        self.policies, self.verdicts = Policies(self), Verdicts(self)


class NodeRecords:
    def __init__(self, store):
        self.store = store

    def request_action(self, inst, action, reason, timeout=10):
        assert action == "stop"
        self.store.stopped.append(inst.container_id)


class Proxies:
    def __init__(self, store):
        self.store = store

    def lagging(self, service, role, version):
        assert (service, role, version) == ("demo", "stable", self.store.pol.stable)
        if self.store.unreachable:
            self.store.unreachable -= 1
            raise requests.ConnectionError("Consul restarting")
        return list(self.store.lagging)

    def wait_served(self, index, wait):
        time.sleep(min(wait, 0.05))
        return index + 1


class History:
    def __init__(self, store):
        self.store = store

    def add(self, service, event, **fields):
        self.store.events.append((event, fields))


class Instances:
    def __init__(self, store):
        self.store = store

    def of(self, service):
        return list(self.store.listed)


class Policies:
    def __init__(self, store):
        self.store = store

    def get(self, service):
        return 1, self.store.pol


class Verdicts:
    def __init__(self, store):
        self.store = store

    def get(self, iid):
        ri = next(r for r in self.store.listed if r.instance.id == iid)
        return Verdict(iid, ri.instance.container_id, "t", PASSED, "9/9 passed", 1, 2)


def test_a_version_that_arrives_during_the_drain_is_not_stopped_by_it():
    store = Store(["v1", "v2"], stable="v2")
    Promoter(store, drain_seconds=0.1).drain_later("demo", "v2")            # v2 promoted; v1 is old
    store.listed.append(registered("v3"))                                   # v3 passes before the drain ends
    time.sleep(0.4)
    assert store.stopped == ["c-v1"]


def test_nothing_is_stopped_when_another_promotion_came_first():
    store = Store(["v1", "v2"], stable="v2")
    Promoter(store, drain_seconds=0.1).drain_later("demo", "v2")
    store.pol = RoutingPolicy("demo", stable="v3")
    time.sleep(0.4)
    assert store.stopped == []


def test_the_drain_waits_for_every_live_proxy_to_serve_the_new_version():
    store = Store(["v1", "v2"], stable="v2")
    store.lagging = ["proxy-reloader:h2:0.0.0.0:80"]                       # still routes v1
    Promoter(store, drain_seconds=0.1).drain_later("demo", "v2")
    time.sleep(0.5)
    assert store.stopped == []
    store.lagging = []                                                       # it switched
    time.sleep(0.5)
    assert store.stopped == ["c-v1"]


def test_a_proxy_that_never_switches_holds_the_drain_and_says_so():
    store = Store(["v1", "v2"], stable="v2")
    store.lagging = ["proxy-reloader:h2:0.0.0.0:80"]
    Promoter(store, drain_seconds=0, confirm_timeout=0.2).drain_later("demo", "v2")
    time.sleep(0.6)
    assert store.stopped == []
    assert [e for e, _ in store.events] == ["drain held"]
    assert "proxy-reloader:h2:0.0.0.0:80 did not serve v2 within 0 s" in store.events[0][1]["reason"]


def test_consul_unreachable_for_a_moment_delays_the_drain_and_loses_nothing():
    store = Store(["v1", "v2"], stable="v2")
    store.unreachable = 2
    Promoter(store, drain_seconds=0).drain_later("demo", "v2")
    time.sleep(3.5)                                  # two reads failed, a second apart, then the answer
    assert store.stopped == ["c-v1"] and store.unreachable == 0
