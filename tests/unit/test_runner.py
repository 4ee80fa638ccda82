"""registrator's runner with a fake Docker source: ordering, events during a sync, reconnects.
The same behaviour runs against the real engine in tests/faults/."""
import threading
import time

from catalog.consul_client import ACLPermissionDenied
from catalog.model import Instance
from registrator import metrics
from registrator.bridge import Bridge
from registrator.docker_source import ContainerEvent
from registrator.runner import Runner, RunnerOptions
from registrator.translate import Settings
from tests.support.fakes import FakeDocker, InMemoryRegistry

L = {"SERVICE_NAME": "demo"}
END = object()          # in a script: the stream closes here (as when dockerd restarts)


class ScriptedDocker(FakeDocker):
    """Event streams scripted per connection; running_ids can be slowed to stretch a sync."""

    def __init__(self, streams, sync_delay=0.0):
        super().__init__()
        self.streams, self.sync_delay, self.syncs = list(streams), sync_delay, 0

    def running_ids(self):
        """The list is taken first, then the sync is stretched: like the Engine's own answer, it
        does not include a container started after the call."""
        self.syncs += 1
        ids = super().running_ids()
        time.sleep(self.sync_delay)
        return ids

    def ping(self):
        return True

    def stream_events(self, on_event, ready, stop):
        script = self.streams.pop(0) if self.streams else None
        ready.set()
        if script is None:
            stop.wait()
            return
        for step in script:
            if step is END:
                return
            if callable(step):
                step()
            else:
                on_event(step)
        stop.wait()


def run_until(runner, condition, timeout=10):
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.02)
    runner.stop()
    t.join(5)
    return condition()


def test_an_event_that_arrives_during_the_first_sync_is_not_dropped():
    reg = InMemoryRegistry()
    dock = ScriptedDocker([[lambda: time.sleep(0.1), lambda: dock.add("c2", "late", labels=L),
                            ContainerEvent("start", "c2")]], sync_delay=0.5)
    dock.add("c1", "early", labels=L)
    runner = Runner(Bridge(reg.instances, reg.rejections, dock, Settings(hostname="h")), dock, RunnerOptions(resync_every=60))
    assert run_until(runner, lambda: set(reg.services) == {"h:early:8080", "h:late:8080"})
    assert dock.syncs == 1, "only the queued start event can have registered the late container"


def test_a_broken_event_stream_reconnects_and_resyncs_away_what_died_meanwhile():
    reg = InMemoryRegistry()

    def container_dies_while_disconnected():
        dock.containers.pop("c1")

    dock = ScriptedDocker([[container_dies_while_disconnected, END]])
    dock.add("c1", "web", labels=L)
    runner = Runner(Bridge(reg.instances, reg.rejections, dock, Settings(hostname="h")), dock, RunnerOptions(resync_every=60))
    assert run_until(runner, lambda: dock.syncs >= 2 and reg.services == {})


class FirstSubscriptionFails(ScriptedDocker):
    """The engine drops between the client's first request and the event subscription."""

    def __init__(self):
        super().__init__([])
        self.tries = 0

    def stream_events(self, on_event, ready, stop):
        self.tries += 1
        if self.tries == 1:
            raise ConnectionError("the engine went away")
        super().stream_events(on_event, ready, stop)


def test_a_first_event_subscription_that_fails_is_tried_again_and_the_first_sync_still_happens():
    reg = InMemoryRegistry()
    dock = FirstSubscriptionFails()
    dock.add("c1", "web", labels=L)
    runner = Runner(Bridge(reg.instances, reg.rejections, dock, Settings(hostname="h")), dock, RunnerOptions(resync_every=60))
    assert run_until(runner, lambda: set(reg.services) == {"h:web:8080"})
    assert dock.tries == 2


def test_a_registrator_stopped_before_its_first_subscription_stops():
    class NeverSubscribes(ScriptedDocker):
        def stream_events(self, on_event, ready, stop):
            raise ConnectionError("no engine")

        def ping(self):
            raise ConnectionError("no engine")

    dock = NeverSubscribes([])
    reg = InMemoryRegistry()
    runner = Runner(Bridge(reg.instances, reg.rejections, dock, Settings(hostname="h")), dock, RunnerOptions(resync_every=60))
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    time.sleep(0.3)
    runner.stop()
    t.join(5)
    assert not t.is_alive(), "run() must return on stop even before the engine ever answered"


def test_kill_with_sigterm_takes_the_instance_out_but_a_sighup_does_not():
    reg = InMemoryRegistry()
    dock = ScriptedDocker([[lambda: time.sleep(0.2), ContainerEvent("kill", "c1", {"signal": "1"}),
                            ContainerEvent("start", "c2"), ContainerEvent("kill", "c3", {"signal": "15"})]])
    for cid, name in (("c1", "hup"), ("c2", "marker"), ("c3", "term")):
        dock.add(cid, name, labels=L)
    runner = Runner(Bridge(reg.instances, reg.rejections, dock, Settings(hostname="h")), dock, RunnerOptions(resync_every=60))
    assert run_until(runner, lambda: ("deregister", "h:term:8080") in reg.calls)
    assert "h:hup:8080" in reg.services          # events run in order: the SIGHUP came first
    assert "h:term:8080" not in reg.services      # SIGTERM: out before the process exits


class RevocableToken:
    """Stands in for catalog.consul_client.TokenFile and the Consul behind it: the token in use
    is refused until a new one is written to the file (`write_new`) and read again."""

    def __init__(self):
        self.path, self.revoked, self.new_in_file, self.reads = "/tokens/registrator.token", True, False, 0
        self.client = self

    def token_self(self):
        if self.revoked:
            raise ACLPermissionDenied("ACL not found")
        return {"accessor": "a"}

    def refresh(self):
        self.reads += 1
        if self.new_in_file:
            self.new_in_file, self.revoked = False, False
            return True
        return False


def test_a_revoked_token_is_reported_once_and_a_new_one_in_its_file_registers_everything_again(caplog):
    reg = InMemoryRegistry()
    dock = ScriptedDocker([])
    dock.add("c1", "web", labels=L)
    bridge = Bridge(reg.instances, reg.rejections, dock, Settings(hostname="h"))
    stale = Instance(id="h:gone:8080", service="demo", address="127.0.0.1", port=1, version="v1",
                     container_id="c0", container_name="gone", image="demo:v1", registered_by="registrator")
    reg.instances.stuck[stale.id] = stale          # dropped by the agent while its token was refused
    token = RevocableToken()
    runner = Runner(bridge, dock, RunnerOptions(resync_every=60, token_check_every=0.05))
    runner.token_file = token
    assert run_until(runner, lambda: token.reads >= 3, timeout=5)
    refusals = [r for r in caplog.records if "Consul refuses registrator's token" in r.getMessage()]
    assert len(refusals) == 1 and "/tokens/registrator.token" in refusals[0].getMessage()
    assert metrics.TOKEN_REFUSED._value.get() == 1
    assert ("deregister", stale.id) not in reg.calls

    registrations = reg.calls.count(("register", "h:web:8080"))
    token.new_in_file = True
    runner = Runner(bridge, dock, RunnerOptions(resync_every=60, token_check_every=0.05))
    runner.token_file, runner.refused = token, True
    assert run_until(runner, lambda: ("deregister", stale.id) in reg.calls and metrics.TOKEN_REFUSED._value.get() == 0)
    assert reg.calls.count(("register", "h:web:8080")) > registrations, "registered again with the new token"
    assert set(reg.services) == {"h:web:8080"}
