"""A full disk under nginx's prefix: a file nginx reads (the table file, the config) that cannot
be written is an error like a refused config. It is logged, shown in /status (`file_errors`,
`last_error`) and in the Consul check, and written again later with no change in Consul;
nginx's workers keep serving what they have, and a push that does not need the file still goes.

The full disk is simulated: the write raises OSError(ENOSPC), what a write to a full filesystem
raises; for the table file itself, by /dev/full, which answers every write with ENOSPC.
(Real-parts twin: tests/integration/test_full_disk.py, where proxy-reloader --exec starts nginx
with what is on disk although it cannot write the table.)"""
import errno
import json
import os
from types import SimpleNamespace

import pytest

from proxy_reloader import backends
from proxy_reloader.render import DYNAMIC, RELOAD
from proxy_reloader.runner import Runner, RunnerOptions
from tests.support.fakes import FakeNginx
from tests.unit.test_push_delta import FakeNginxTable, route
from tests.unit.test_reloader_apply import Reporter, reg, serves
from tests.unit.test_reloader_loop import FakeMirror, started, until

NO_ROOM = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Disk:
    """Whether the prefix's filesystem has room: while it has none, each write of the files
    listed (the table file, the candidate config) raises ENOSPC."""

    def __init__(self, monkeypatch, nginx: FakeNginx, files=("table", "config")):
        self.full = True
        write_table, validate = backends.write_table, nginx.validate

        def table(*args, **kwargs):
            if self.full and "table" in files:
                raise NO_ROOM
            return write_table(*args, **kwargs)

        def config(text):
            if self.full and "config" in files:
                raise NO_ROOM
            return validate(text)

        monkeypatch.setattr(backends, "write_table", table)
        nginx.validate = config


def make(tmp_path, mode=DYNAMIC, new_config=False, mirror=None, **options):
    """A runner on a fake nginx; in dynamic mode nginx runs the runner's config already, unless
    `new_config` (then there is one to write and check, as after an upgrade)."""
    nginx = FakeNginx(tmp_path)
    push = FakeNginxTable() if mode == DYNAMIC else None
    reporter = Reporter()
    r = Runner(mirror or SimpleNamespace(disrupted_at=0.0), nginx, RunnerOptions(mode=mode, **options),
               reporter=reporter, push=push)
    if mode == DYNAMIC and not new_config:
        nginx.conf = r._render([])                   # the same text for any routes
    return r, nginx, push, reporter


def step(r, snapshot=None):
    r.update(snapshot or {})
    r._apply()


def table_file(tmp_path):
    return json.loads((tmp_path / "backends.json").read_text())["services"]


def test_a_table_file_that_cannot_be_written_is_reported_and_written_later_while_the_push_goes_on(
        tmp_path, monkeypatch):
    r, nginx, push, reporter = make(tmp_path, write_retry=60)
    disk = Disk(monkeypatch, nginx)
    step(r, {"a": ([reg("a", 1)], None)})
    assert set(push.bodies[-1]["services"]) == {"a"}, "the workers got the change"
    assert [x.service for x in r.routes] == ["a"]
    error = f"could not write {tmp_path / 'backends.json'}: No space left on device"
    assert r.status()["file_errors"] == {str(tmp_path / "backends.json"): error}
    assert r.last_error == error and reporter.reports[-1] == (False, error)
    assert r.recheck is not None and r.recheck.is_alive(), "written again later, with no change in Consul"

    disk.full = False
    pushes = len(push.bodies)
    step(r)                                          # what the retry does: the same routes again
    assert set(table_file(tmp_path)) == {"a"} and len(push.bodies) == pushes
    assert r.status()["file_errors"] == {} and r.last_error is None and reporter.reports[-1][0] is True


def test_the_loop_goes_on_through_a_full_disk_and_writes_the_table_once_there_is_room(tmp_path, monkeypatch):
    mirror = FakeMirror({"a": ([reg("a", 1)], None)})
    r, nginx, push, _ = make(tmp_path, mirror=mirror, write_retry=0.05, min_wait=0.01, max_wait=0.05)
    disk = Disk(monkeypatch, nginx)
    loop = started(r)
    try:
        assert until(lambda: r.file_errors and r.routes), "the push applied, the file error reported"
        assert until(lambda: mirror.calls.count("take") >= 2), "tried again, with no change in Consul"
        assert loop.is_alive() and not (tmp_path / "backends.json").exists()
        disk.full = False
        assert until(lambda: (tmp_path / "backends.json").exists() and not r.file_errors)
        assert set(table_file(tmp_path)) == {"a"} and r.last_error is None
    finally:
        r.stop()
        loop.join(5)
    assert not loop.is_alive()


def test_in_reload_mode_a_config_that_cannot_be_written_keeps_nginx_on_the_last_good_one(tmp_path, monkeypatch):
    r, nginx, _, reporter = make(tmp_path, mode=RELOAD, write_retry=60)
    step(r, {"a": ([reg("a", 1)], None)})
    before, routes = nginx.conf, list(r.routes)
    disk = Disk(monkeypatch, nginx)
    step(r, {"b": ([reg("b", 2)], None)})
    assert nginx.conf == before and r.routes == routes, "nginx and /status: still only a"
    error = f"could not write {tmp_path / 'nginx.conf'}: No space left on device"
    assert r.last_error == error and reporter.reports[-1] == (False, error)
    assert r.recheck is not None and r.recheck.is_alive()

    disk.full = False
    step(r)
    assert serves(nginx.conf, 2) and {x.service for x in r.routes} == {"a", "b"} and r.last_error is None


def test_in_dynamic_mode_a_config_that_cannot_be_written_does_not_hold_back_the_push(tmp_path, monkeypatch):
    r, nginx, push, _ = make(tmp_path, new_config=True, write_retry=60)
    Disk(monkeypatch, nginx, files=("config",))
    step(r, {"a": ([reg("a", 1)], None)})
    assert set(push.bodies[-1]["services"]) == {"a"} and [x.service for x in r.routes] == ["a"]
    assert set(r.file_errors) == {str(tmp_path / "nginx.conf")} and nginx.installed == []
    assert "nginx.conf: No space left on device" in r.last_error


def test_a_table_write_on_a_full_disk_keeps_the_last_table_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "backends.json"
    backends.write_table(path, 1, {"a": backends.entry(route("a", 1))})
    # The temporary file is where /dev/full answers: every write to it fails with ENOSPC.
    tmp = tmp_path / f".backends.json.{os.getpid()}.tmp"
    tmp.symlink_to("/dev/full")
    with pytest.raises(OSError) as failed:
        backends.write_table(path, 2, {"b": backends.entry(route("b", 2))})
    assert failed.value.errno == errno.ENOSPC
    assert set(table_file(tmp_path)) == {"a"}
    assert not os.path.lexists(tmp)
