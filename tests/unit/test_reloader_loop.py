"""proxy-reloader's loop with a fake mirror and nginx: the first full read, each later batch of
changes, quiescence (min_wait / max_wait), the heartbeat to Consul, and stopping.
(Real-parts twin: tests/e2e/test_proxy_reloader.py.)"""
import threading
import time

import requests

from catalog.routing import Pool, Route
from proxy_reloader.render import DYNAMIC
from proxy_reloader.runner import Runner, RunnerOptions
from tests.support.fakes import FakeNginx
from tests.unit.test_push_delta import FakeNginxTable
from tests.unit.test_reloader_apply import reg, serves


class FakeMirror:
    """catalog.mirror.CatalogMirror as the runner reads it; `calls` in order."""

    def __init__(self, everything=None, ready=True):
        self.ready = threading.Event()
        if ready:
            self.ready.set()
        self.disrupted_at = 0.0
        self.first, self.changes, self.calls = everything or {}, [], []

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")

    def everything(self):
        self.calls.append("everything")
        return self.first

    def take(self):
        self.calls.append("take")
        return self.changes.pop(0) if self.changes else {}

    def take_certificates(self):
        return None


class Reporter:
    def __init__(self, beat_fails=0):
        self.reports, self.beats, self.beat_fails = [], 0, beat_fails

    def __call__(self, ok, message):
        self.reports.append((ok, message))

    def heartbeat(self):
        self.beats += 1
        if self.beats <= self.beat_fails:
            raise requests.ConnectionError("consul down")


def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.01)
    return condition()


def started(runner):
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    return t


def test_the_loop_applies_everything_first_then_each_change(tmp_path):
    mirror, nginx, reporter = FakeMirror({"a": ([reg("a", 1)], None)}), FakeNginx(tmp_path), Reporter()
    r = Runner(mirror, nginx, RunnerOptions(min_wait=0.01, max_wait=0.1), reporter=reporter)
    t = started(r)
    try:
        assert until(lambda: len(nginx.installed) == 1) and serves(nginx.conf, 1)
        assert mirror.calls == ["start", "everything"] and reporter.reports[-1][0] is True
        mirror.changes.append({"b": ([reg("b", 2)], None)})
        r.dirty.set()                                         # the mirror's on_change
        assert until(lambda: len(nginx.installed) == 2)
        assert serves(nginx.conf, 1) and serves(nginx.conf, 2)
        assert mirror.calls[:3] == ["start", "everything", "take"]
        assert reporter.beats >= 1
    finally:
        r.stop()
        t.join(5)
    assert not t.is_alive() and mirror.calls[-1] == "stop"


def test_stopped_before_consul_answers_it_touches_nothing(tmp_path):
    mirror, nginx, reporter = FakeMirror(ready=False), FakeNginx(tmp_path), Reporter()
    r = Runner(mirror, nginx, RunnerOptions(), reporter=reporter)
    start = time.monotonic()
    t = started(r)
    assert until(lambda: reporter.beats == 1), "alive while it waits for Consul (a beat each second)"
    r.stop()
    t.join(3)
    assert not t.is_alive() and time.monotonic() - start < 3.0, "a stop is noticed within a second"
    assert mirror.calls == ["start"] and nginx.validated == [] and reporter.reports == []


def test_idle_the_loop_notices_an_nginx_restart_and_pushes_the_whole_table_again(tmp_path):
    mirror, table, reporter = FakeMirror({"a": ([reg("a", 1)], None)}), FakeNginxTable(), Reporter()
    r = Runner(mirror, FakeNginx(tmp_path), RunnerOptions(mode=DYNAMIC, min_wait=0.01, max_wait=0.1,
                                                         restart_check=0.0, heartbeat=0.0),
               push=table, reporter=reporter)
    t = started(r)
    try:
        assert until(lambda: len(table.bodies) == 1)
        table.boot, table.generation = "b2", 0                  # nginx restarted, no Consul change
        restarted = time.monotonic()
        assert until(lambda: len(table.bodies) == 2, timeout=3)
        assert time.monotonic() - restarted < 1.7, "noticed at the next idle second"
        assert table.bodies[-1]["full"] is True and set(table.bodies[-1]["services"]) == {"a"}
        beats = reporter.beats
        assert until(lambda: reporter.beats > beats, timeout=2), "heartbeats go on while idle"
    finally:
        r.stop()
        t.join(5)
    assert mirror.calls.count("everything") == 1


# --- quiescence --------------------------------------------------------------------------

def changes_every(r, period, for_seconds):
    """A change every `period` s for `for_seconds` s; the thread's `last` is when the last came."""
    def go():
        end = time.monotonic() + for_seconds
        while time.monotonic() < end:
            r.dirty.set()
            t.last = time.monotonic()
            time.sleep(period)
    t = threading.Thread(target=go, daemon=True)
    t.last = time.monotonic()
    t.start()
    return t


def quiesce_seconds(r):
    start = time.monotonic()
    r._quiesce()
    return time.monotonic() - start


def test_after_the_last_change_it_waits_min_wait(tmp_path):
    r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(min_wait=0.2, max_wait=5.0))
    r.dirty.set()
    assert 0.18 <= quiesce_seconds(r) < 0.5
    assert not r.dirty.is_set(), "the changes waited for are taken"


def test_changes_within_min_wait_extend_the_wait(tmp_path):
    r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(min_wait=0.2, max_wait=5.0))
    changes = changes_every(r, 0.05, 0.4)
    took = quiesce_seconds(r)
    ended = time.monotonic()
    changes.join()
    assert took >= 0.3                                    # not the first change's 0.2 s: the later ones extended it
    assert ended - changes.last >= 0.18                   # it ended only after min_wait with no change
    assert took < 2.0                                     # and not at max_wait


def test_changes_that_never_stop_are_applied_after_max_wait(tmp_path):
    r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(min_wait=0.2, max_wait=0.5))
    changes = changes_every(r, 0.05, 0.9)
    assert 0.45 <= quiesce_seconds(r) < 0.8
    changes.join()


def test_stopping_ends_the_wait(tmp_path):
    r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(min_wait=5.0, max_wait=10.0))
    r.stop()
    assert quiesce_seconds(r) < 0.1


# --- heartbeat ---------------------------------------------------------------------------

def test_the_heartbeat_is_sent_every_heartbeat_seconds(tmp_path):
    reporter = Reporter()
    r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(heartbeat=30.0), reporter=reporter)
    for _ in range(3):
        r._heartbeat()
    assert reporter.beats == 1
    r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(heartbeat=0.05), reporter=reporter)
    r._heartbeat()
    time.sleep(0.06)
    r._heartbeat()
    assert reporter.beats == 3


def test_a_heartbeat_consul_did_not_get_is_sent_again_at_once(tmp_path):
    reporter = Reporter(beat_fails=1)
    r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(heartbeat=30.0), reporter=reporter)
    r._heartbeat()                                        # Consul unreachable: no exception out of the loop
    r._heartbeat()
    r._heartbeat()
    assert reporter.beats == 2


def test_a_reporter_without_a_heartbeat_and_no_reporter_are_fine(tmp_path):
    for reporter in (None, lambda ok, message: None):
        r = Runner(FakeMirror(), FakeNginx(tmp_path), RunnerOptions(heartbeat=0.0), reporter=reporter)
        r._heartbeat()
        r.computed = {"a": Route("a", "/a/", "", Pool("v1", (("127.0.0.1", 1),)))}
        r._apply()
        assert r.last_error is None
