"""The test queue: the instance seen last is tested first, first tests before re-verifications,
and a job that raises does not take a worker away. (Through the gate: tests/unit/test_gate.py;
on the real stack: bench/backlog_bench.py.)"""
import threading

import pytest

from gatekeeper.admission.queue import FIRST, REVERIFY, NewestFirst


def blocked_queue():
    """One worker, held by a first job until `release` is set; `ran` lists what ran, in order."""
    q, ran, release, started = NewestFirst(1, "t"), [], threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(5)
    q.submit(FIRST, hold)
    assert started.wait(5)
    return q, ran, release


def test_the_job_submitted_last_runs_first_and_first_tests_before_reverifications():
    q, ran, release = blocked_queue()
    for name in ("reverify-old", "old", "older-reverify"):
        q.submit(REVERIFY if "reverify" in name else FIRST, ran.append, name)
    q.submit(FIRST, ran.append, "new")
    assert q.waiting() == 4
    release.set()
    q.shutdown(wait=True)
    assert ran == ["new", "old", "older-reverify", "reverify-old"]


def test_a_job_that_raises_does_not_take_the_worker_away():
    q, ran, release = blocked_queue()
    q.submit(FIRST, ran.append, "after")
    q.submit(FIRST, lambda: 1 / 0)
    release.set()
    q.shutdown(wait=True)
    assert ran == ["after"]


def test_shut_down_it_drops_what_has_not_started_and_takes_nothing_more():
    q, ran, release = blocked_queue()
    q.submit(FIRST, ran.append, "never")
    q.shutdown()
    release.set()
    with pytest.raises(RuntimeError, match="^the test queue is shut down$"):
        q.submit(FIRST, ran.append, "late")
    assert ran == []


def test_its_workers_are_named_and_never_keep_a_stopping_gatekeeper_alive():
    """Daemon threads, named test-N as a thread dump of a hung gatekeeper shows them: a test
    that hangs does not keep the process from exiting."""
    before = set(threading.enumerate())
    q = NewestFirst(2, "test")
    workers = {t.name: t.daemon for t in set(threading.enumerate()) - before}
    q.shutdown(wait=True)
    assert workers == {"test-0": True, "test-1": True}
