"""Upgrading the stack under load, as docs/operations.md's runbook says: a new build installed
over the old one, then each daemon restarted on it, one at a time (proxy-reloader, registrator,
the follower gatekeeper, the leader last), while keep-alive clients that never retry use the
service. Nothing may fail, no admitted instance is tested again or loses its gate, the lock
moves to the follower cleanly, and the upgraded stack gates and serves the next version."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import SESSION
from testbed.load import KeepAliveLoad
from testbed.processes import ROOT, Proc, python_module
from testbed.stack import TEST_LABEL, Stack

pytestmark = pytest.mark.e2e

PORT = 18026
SERVICE = "upgrade"
PACKAGES = ("catalog", "gatekeeper", "registrator", "proxy_reloader")
# Python writes a module's bytecode beside it when it imports the module
WRITES_BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}


def install(release: Path) -> float:
    """What an upgrade does to the installed code (pip --force-reinstall, Ansible): every file of
    the new build written over the old one, each one new. When it was done."""
    done = time.time()
    for package in PACKAGES:
        shutil.copytree(ROOT / package, release / package, dirs_exist_ok=True, copy_function=shutil.copy,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return done


def runs_the_new_build(release: Path, package: str, installed: float) -> bool:
    """A process started after the install imported the new files: Python compiled them again
    (their bytecode is newer than the install)."""
    return any(p.stat().st_mtime >= installed for p in (release / package / "__pycache__").glob("*.pyc"))


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    base = tmp_path_factory.mktemp("upgrade")
    release = base / "release"
    install(release)
    s = Stack(consul_server, base, docker_client, f"{SESSION}up", PORT, service=SERVICE)
    for p in (s.registrator, s.gatekeeper, s.reloader):
        p.cwd, p.env = release, WRITES_BYTECODE
    s.release = release
    s.start()
    yield s
    s.stop()


def restart(proc: Proc) -> None:
    proc.stop()
    proc.start()


def test_each_daemon_replaced_by_a_new_build_one_at_a_time_under_keep_alive_load_loses_nothing(stack):
    stack.wait(lambda: "is now the leader" in stack.gatekeeper.log(), 30, "the first gatekeeper to lead")
    follower = Proc("gatekeeper-follower", python_module(
        "gatekeeper", "--consul", stack.consul.address, "--consul-token-file", stack.consul.token_file("gatekeeper"),
        "run", "--id", "follower", "--wait", "5", "--drain-seconds", "3", "--test-timeout", "60",
        "--test-label", f"{TEST_LABEL}={stack.session}"), stack.base, env=WRITES_BYTECODE, cwd=stack.release)
    follower.start()
    load = None
    try:
        v1 = [stack.deploy(f"v1-{n}", "demo:v1") for n in range(2)]
        stack.wait(lambda: stack.proxy_serves(v1), 90, "both v1 instances tested, admitted and served")
        stack.wait(lambda: "follower" in follower.log(), 15, "the follower to start")
        assert "follower is now the leader" not in follower.log()
        admitted = {ri.instance.id: stack.stores.verdicts.get(ri.instance.id)
                    for ri in stack.stores.instances.of(SERVICE)}
        load = KeepAliveLoad("127.0.0.1", PORT, connections=10, rate=20, max_seconds=240).start()
        time.sleep(1)

        installed = install(stack.release)
        restart(stack.reloader)
        stack.wait(lambda: runs_the_new_build(stack.release, "proxy_reloader", installed)
                   and stack.proxy_serves(v1), 30, "the new proxy-reloader serving what the old one did")
        syncs = stack.registrator.log().count("sync:")
        restart(stack.registrator)
        stack.wait(lambda: runs_the_new_build(stack.release, "registrator", installed)
                   and stack.registrator.log().count("sync:") > syncs, 30, "the new registrator's first sync")
        restart(follower)
        stack.wait(lambda: runs_the_new_build(stack.release, "gatekeeper", installed), 15,
                   "the follower on the new build")
        stack.gatekeeper.stop()                        # the leader last: it lets go of the lock as it stops
        stack.wait(lambda: "follower is now the leader" in follower.log(), 30, "the follower to take the lock")
        stack.gatekeeper.start()                       # the old leader, on the new build, now follows
        time.sleep(3)                                  # the new leader's first passes, under load

        after = {ri.instance.id: ri for ri in stack.stores.instances.of(SERVICE)}
        assert set(after) == set(admitted)
        for iid, verdict in admitted.items():
            assert after[iid].admitted, f"{iid} lost its gate in the upgrade"
            assert stack.stores.verdicts.get(iid) == verdict, f"{iid} was tested again"
        v2 = stack.deploy("v2", "demo:v2")             # the upgraded stack gates and serves
        stack.wait(lambda: stack.served_version() == "v2", 90, "v2 tested by the new leader and served")
        load.finish()
        assert load.total > 500, load.total
        assert load.failures == [], load.failures[:5]
        assert set(load.versions) <= {"v1", "v2"} and load.versions["v1"] > 0
        assert stack.gatekeeper.log().count("is now the leader") == 1, "the restarted old leader follows"
        assert follower.log().count("is now the leader") == 1
        assert stack.instance(v2).admitted
    finally:
        if load is not None:
            load.finish()
        follower.stop()
