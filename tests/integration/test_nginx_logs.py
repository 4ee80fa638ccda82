"""nginx's access.log and error.log rotated by size (proxy_reloader/logfiles.py), on the real
nginx as proxy-reloader --exec runs it (started as root here: its workers run as nobody). Under
load: the logs are rotated, every request answered and logged once, the new requests in the new
access.log, at most --log-keep old files. A worker that cannot reach the logs folder loses
nothing and is named in proxy-reloader's log. And proxy-reloader itself rotates with its options."""
from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxy_reloader import logfiles
from proxy_reloader.logfiles import LogRotation
from proxy_reloader.nginx import Nginx
from proxy_reloader.push import ensure_secret
from proxy_reloader.render import DYNAMIC, Settings, render
from proxy_reloader.supervisor import NginxChild
from testbed.processes import Proc, python_module, wait_until

PORT, RELOADER_PORT = 18790, 18791
LOGGED = re.compile(rb"config-version\?n=(\d+) ")
# Some 400 KiB of access log over a few seconds: the workers write their buffered lines once a
# second or per 64 KiB, so the logs grow, and are rotated, many times while requests go on.
REQUESTS = 3000


@pytest.fixture
def reachable():
    """A folder nginx's workers (nobody) can reach, as /var/lib/proxystack/nginx is; pytest's own
    temporary folders are its user's only."""
    folder = Path(tempfile.mkdtemp(prefix="proxystack-logs-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def started():
    children = []

    def start(prefix: Path) -> Nginx:
        """The stack's dynamic config (its buffered access log) under `prefix`, nginx its child."""
        n = Nginx(str(prefix), listen=f"127.0.0.1:{PORT}")
        settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path())
        ensure_secret(settings.secret)
        n.apply(render([], str(n.prefix), n.listen, settings=settings))
        child = NginxChild(n)
        child.start()
        children.append(child)
        wait_until(lambda: n.served_version(), 20, "nginx up as a child")
        return n

    yield start
    for child in children:
        child.stop()


def load(listen: str, numbers) -> list:
    """One request per number, eight at a time; an error fails the test."""
    def one(n):
        with urllib.request.urlopen(f"http://{listen}/__proxystack/config-version?n={n}", timeout=10) as r:
            return r.status
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, numbers))


def logged(folder: Path, name: str = "access.log*") -> list:
    """The request numbers in the access logs matching `name`, in file order."""
    return [int(n) for path in sorted(folder.glob(name)) for n in LOGGED.findall(path.read_bytes())]


def rotated(folder: Path, name: str = "access.log") -> list:
    return sorted(p.name for p in folder.glob(f"{name}.*"))


def test_under_load_the_logs_rotate_and_every_request_is_answered_and_logged_once(reachable, started):
    n = started(reachable / "nginx")
    logs = n.prefix / "logs"
    # Every old file kept, so that every request can be looked for.
    rotation = LogRotation(n, max_size=8 * 1024, keep=logfiles.MAX_KEEP, every=0.05).start()
    try:
        # in three batches, each rotated at least once (however slowly a busy machine serves them)
        batch = REQUESTS // 3
        for first in range(0, REQUESTS, batch):
            before = rotation.rotations
            assert load(n.listen, range(first, first + batch)) == [200] * batch, "no request failed"
            wait_until(lambda: rotation.rotations > before, 10, "the access log rotated after a batch")
        wait_until(lambda: sorted(logged(logs)) == list(range(REQUESTS)), 10,
                   "every request in the access logs (flushed once a second)")
    finally:
        rotation.stop()
    assert rotation.rotations >= 3 and "access.log.1" in rotated(logs)
    assert sorted(logged(logs)) == list(range(REQUESTS)), "each request logged once, none lost"

    assert load(n.listen, range(REQUESTS, REQUESTS + 10)) == [200] * 10
    wait_until(lambda: sorted(logged(logs, "access.log")) == list(range(REQUESTS, REQUESTS + 10)), 10,
               "the new requests in the new access.log")
    if os.geteuid() == 0:            # the master made it for its workers
        assert (logs / "access.log").stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_at_most_keep_old_files_stay_and_the_error_log_rotates_too(reachable, started):
    n = started(reachable / "nginx")
    logs = n.prefix / "logs"
    with open(logs / "error.log", "ab") as f:
        f.write(b"an old line of the error log\n" * 400)        # 11 KiB
    most, done = [0], threading.Event()

    def count_old_files():
        while not done.wait(0.005):
            most[0] = max(most[0], len(rotated(logs)))

    watcher = threading.Thread(target=count_old_files, daemon=True)
    watcher.start()
    rotation = LogRotation(n, max_size=2 * 1024, keep=2, every=0.05).start()
    try:
        assert load(n.listen, range(REQUESTS)) == [200] * REQUESTS
        wait_until(lambda: rotation.rotations >= 4 and rotated(logs) == ["access.log.1", "access.log.2"], 10,
                   "the access log rotated a few times")
        wait_until(lambda: rotated(logs, "error.log") == ["error.log.1"], 10, "the error log rotated")
    finally:
        rotation.stop()
        done.set()
        watcher.join()
    assert most[0] == 2, "never more than --log-keep old files"
    assert b"an old line of the error log" in (logs / "error.log.1").read_bytes()
    assert (logs / "error.log").exists(), "nginx made a new error.log"
    wait_until(lambda: set(logged(logs)) >= set(range(REQUESTS - 10, REQUESTS)), 10, "the latest requests kept")


def test_a_worker_that_cannot_reach_the_logs_folder_loses_nothing_and_is_named(tmp_path, started, caplog,
                                                                                   monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("nginx's workers run as nobody only when it starts as root")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)                      # root's only: nginx's workers (nobody) cannot enter
    n = started(private / "nginx")
    logs = n.prefix / "logs"
    monkeypatch.setattr(logfiles, "REOPEN_GRACE", 0.3)
    caplog.set_level(logging.INFO, logger="proxy_reloader.logfiles")
    rotation = LogRotation(n, max_size=2 * 1024, keep=2, every=0.05).start()
    try:
        assert load(n.listen, range(100)) == [200] * 100
        wait_until(lambda: rotation.rotations >= 1, 10, "the access log rotated")
        assert load(n.listen, range(100, 200)) == [200] * 100
        wait_until(lambda: "still writes" in caplog.text, 10, "the stuck worker named")
    finally:
        rotation.stop()
    wait_until(lambda: sorted(logged(logs)) == list(range(200)), 10, "every request logged")
    assert rotated(logs) == ["access.log.1"], "the log a worker still writes is not rotated away"


def test_proxy_reloader_rotates_its_nginx_logs_with_its_options(consul_server, reachable):
    listen = f"127.0.0.1:{RELOADER_PORT}"
    proc = Proc("proxy-reloader-logs", python_module(
        "proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
        consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(reachable / "nginx"),
        "--listen", listen, "--admin", "", "--exec", "--log-max-size", "2k", "--log-keep", "1"), reachable).start()
    nginx = Nginx(str(reachable / "nginx"), listen=listen)
    logs = nginx.prefix / "logs"
    try:
        wait_until(lambda: nginx.served_version(), 30, "nginx serving under proxy-reloader")
        assert load(listen, range(100)) == [200] * 100              # some 13 KiB of log
        wait_until(lambda: rotated(logs) == ["access.log.1"], logfiles.CHECK_EVERY + 10, "the access log rotated")
        assert load(listen, range(100, 110)) == [200] * 10               # too few for another rotation
        wait_until(lambda: sorted(logged(logs, "access.log")) == list(range(100, 110)), 10,
                   "the new requests in the new access.log")
        assert sorted(logged(logs)) == list(range(110))
    finally:
        proc.stop()
    assert "rotated nginx's access.log" in proc.log()
