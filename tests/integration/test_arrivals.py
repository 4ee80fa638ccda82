"""A new instance does not wait for the pass under way: the leading daemon reads the instances
whose gate check just appeared and the gate starts their tests at once. Against a real Consul:
the daemon's own watch, its read of the new service, the gate's queue."""
import threading
import time

from catalog.leader import LeaderLock
from catalog.model import Instance
from gatekeeper.admission.gate import Gate
from gatekeeper.daemon import Daemon
from gatekeeper.reconciler import Reconciler
from tests.support.fakes import FakeTester


class Only(Reconciler):
    """The gate, shown only this test's services (the test Consul holds other tests' too)."""

    def __init__(self, inner, prefix):
        self.inner, self.prefix = inner, prefix

    def _mine(self, snapshot):
        return {s: i for s, i in snapshot.items() if s.startswith(self.prefix)}

    def begin_pass(self, snapshot):
        self.inner.begin_pass(self._mine(snapshot))

    def reconcile(self, service, instances):
        if service.startswith(self.prefix):
            self.inner.reconcile(service, instances)

    def arrived(self, service, instances):
        if service.startswith(self.prefix):
            self.inner.arrived(service, instances)

    def end_pass(self, snapshot):
        self.inner.end_pass(self._mine(snapshot))


class Stuck(Reconciler):
    """A pass that takes as long as the test says (a pass over a backlog of thousands)."""

    def __init__(self, service):
        self.service, self.inside, self.release = service, threading.Event(), threading.Event()

    def reconcile(self, service, instances):
        if service == self.service and not self.release.is_set():
            self.inside.set()
            self.release.wait(60)


def instance(service, n):
    return Instance(id=f"{service}:web{n}:8080", service=service, address="127.0.0.1", port=31000 + n,
                    version="v1", container_id=f"c{n}", container_name=f"web{n}", image="demo:v1",
                    registered_by="registrator@test", tests_image="demo-test:latest", proxy_path=f"/{service}/")


def wait(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_container_registered_while_a_long_pass_runs_is_tested_before_the_pass_ends(stores, unique):
    tester = FakeTester()                         # what the gate asked to test (DockerTester: test_tester.py)
    gate = Gate(stores, tester, forget_after=1e9)
    stuck = Stuck(f"slow-{unique}")              # not the gate's: only the pass is held up by it
    daemon = Daemon(stores.instances, stores.policies, [Only(gate, unique), stuck],
                    LeaderLock(stores.locks, f"test@{unique}", key=f"test/{unique}/leader"), wait=5)
    slow, new = instance(f"slow-{unique}", 1), instance(f"{unique}-new", 2)
    runner = threading.Thread(target=daemon.run, daemon=True)
    try:
        runner.start()
        wait(lambda: gate.passes > 0, 30, "the daemon's first pass")
        stores.instances.register(slow)
        assert stuck.inside.wait(30), "the pass reached the slow service"
        stores.instances.register(new)
        wait(lambda: tester.runs, 30, "the new instance's test")
        assert not stuck.release.is_set(), "started while the pass was still under way"
        wait(lambda: gate.verdicts.get(new.id) is not None, 30, "its verdict")
        stuck.release.set()
        passes = gate.passes
        wait(lambda: gate.passes > passes, 30, "the pass to end")
        assert tester.runs == [("demo-test:latest", "http://127.0.0.1:31002")], "tested once, though the pass saw it too"
        assert stores.verdicts.get(new.id).state == "passed"
    finally:
        stuck.release.set()
        daemon.stop()
        runner.join(10)
        for inst in (slow, new):
            stores.instances.deregister(inst.id)
            stores.verdicts.forget(inst.id)
        stores.consul.kv_delete_tree(f"test/{unique}/")
