"""registrator's runner with a fake Docker source: ordering, events during a sync, reconnects.
The same behaviour runs against the real engine in tests/faults/."""
import threading
import time

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
