"""Rotating nginx's logs by size, with a stand-in for nginx's master: which files move where,
what is deleted, when nginx is told, when nothing is touched. (Real-nginx twin, under load:
tests/integration/test_nginx_logs.py.)"""
import logging
import os
import time

import pytest

from proxy_reloader import logfiles
from proxy_reloader.logfiles import LogRotation, parse_size


class Master:
    """nginx's master as the rotation sees it: its pid (None: no nginx runs) and the reopens asked."""

    def __init__(self, prefix, pid=4242):
        self.prefix, self.pid, self.reopens = prefix, pid, 0
        self.pid_file = prefix / "nginx.pid"
        (prefix / "logs").mkdir()

    def master_pid(self):
        return self.pid

    def reopen_logs(self):
        self.reopens += 1
        return True


def write(folder, name, size, fill=b"x"):
    (folder / name).write_bytes(fill * size)


def names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("raw, size", [("0", 0), ("512", 512), ("64k", 65536), ("100m", 100 * 1024 ** 2),
                                       ("1G", 1024 ** 3)])
def test_sizes_are_bytes_or_k_m_g(raw, size):
    assert parse_size(raw) == size


@pytest.mark.parametrize("raw", ["", "-1", "1.5m", "10mb", "m", "1 t"])
def test_what_is_not_a_size_is_refused_with_the_rule(raw):
    with pytest.raises(ValueError, match="such as 100m"):
        parse_size(raw)


def test_a_log_over_the_size_moves_one_up_the_oldest_goes_and_nginx_reopens_once(tmp_path):
    nginx = Master(tmp_path)
    logs = tmp_path / "logs"
    for name, fill in [("access.log", b"n"), ("access.log.1", b"1"), ("access.log.2", b"2"), ("access.log.3", b"3"),
                       ("access.log.7", b"7"), ("error.log", b"e")]:
        write(logs, name, 200, fill)
    rotation = LogRotation(nginx, max_size=100, keep=3)
    assert rotation.check() == ["access.log", "error.log"]
    assert nginx.reopens == 1 and rotation.rotations == 1
    assert names(logs) == ["access.log.1", "access.log.2", "access.log.3", "error.log.1"]
    assert [(logs / f"access.log.{i}").read_bytes()[:1] for i in (1, 2, 3)] == [b"n", b"1", b"2"]
    assert (logs / "error.log.1").read_bytes()[:1] == b"e"


def test_logs_within_the_size_are_left_alone(tmp_path):
    nginx = Master(tmp_path)
    write(tmp_path / "logs", "access.log", 100)
    assert LogRotation(nginx, max_size=100).check() == []
    assert names(tmp_path / "logs") == ["access.log"] and nginx.reopens == 0


def test_without_a_running_nginx_nothing_is_renamed_and_that_is_said_once(tmp_path, caplog):
    nginx = Master(tmp_path, pid=None)
    write(tmp_path / "logs", "access.log", 200)
    rotation = LogRotation(nginx, max_size=100)
    assert rotation.check() == [] and rotation.check() == []
    assert names(tmp_path / "logs") == ["access.log"] and nginx.reopens == 0
    assert caplog.text.count("no running nginx to tell") == 1


def test_a_log_that_cannot_be_renamed_is_said_and_the_others_rotate(tmp_path, caplog, monkeypatch):
    nginx = Master(tmp_path)
    logs = tmp_path / "logs"
    write(logs, "access.log", 200)
    write(logs, "error.log", 200)
    real = type(logs).replace

    def replace(path, target):
        if path.name == "access.log":
            raise PermissionError(13, "Permission denied")
        return real(path, target)

    monkeypatch.setattr(type(logs), "replace", replace)
    assert LogRotation(nginx, max_size=100).check() == ["error.log"]
    assert "could not rotate nginx's" in caplog.text and nginx.reopens == 1


def test_a_worker_still_writing_the_renamed_log_is_named(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logfiles, "REOPEN_GRACE", 1.0)
    caplog.set_level(logging.INFO, logger="proxy_reloader.logfiles")
    nginx = Master(tmp_path)
    logs = tmp_path / "logs"
    write(logs, "access.log", 200)
    rotation = LogRotation(nginx, max_size=100)
    rotation.check()
    rotation.check()
    assert "still writes" not in caplog.text, "written just now, as the workers reopen"
    later = time.time() + 5                                    # a worker wrote it well after the reopen
    os.utime(logs / "access.log.1", (later, later))
    rotation.check()
    rotation.check()
    assert caplog.text.count("still writes") == 1


def test_the_check_runs_on_its_own_thread_until_stopped(tmp_path):
    nginx = Master(tmp_path)
    write(tmp_path / "logs", "access.log", 200)
    rotation = LogRotation(nginx, max_size=100, every=0.01).start()
    deadline = time.monotonic() + 5
    while not rotation.rotations and time.monotonic() < deadline:
        time.sleep(0.01)
    rotation.stop()
    assert rotation.rotations == 1 and names(tmp_path / "logs") == ["access.log.1"]
