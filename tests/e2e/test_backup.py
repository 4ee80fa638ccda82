"""Backup and restore (catalog/backup.py, `make backup` / `make restore`) on real parts: the
stack's Consul lost with its data and token files, a fresh one in its place, the backup
restored into it: the same version served, the same policies, verdicts and history, and no
instance tested again."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import SESSION
from testbed.processes import ConsulServer, ROOT, python_module
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT, CONSUL_HTTP, CONSUL_PORTS = 18030, 18540, 18340
SERVICE = "bkdemo"


def backup(*args):
    res = subprocess.run(python_module("catalog.backup", *args), capture_output=True, text=True, timeout=120, cwd=ROOT)
    return res.returncode, res.stdout, res.stderr


def state(stack):
    """What an operator reads: the service's status and history, and every instance's verdict."""
    _, status, _ = stack.gatekeeper_cli("status", SERVICE, "--json")
    _, history, _ = stack.gatekeeper_cli("history", SERVICE, "--json")
    verdicts = {ri.instance.id: stack.stores.verdicts.get(ri.instance.id) for ri in stack.stores.instances.of(SERVICE)}
    policy = json.loads(status)["services"][0]["policy"]
    return {"policy": policy, "history": json.loads(history)["history"], "verdicts": verdicts}


def test_a_backup_restored_into_a_fresh_consul_gives_everything_back_and_tests_nothing_again(
        docker_client, demo_images, tmp_path):
    first = ConsulServer(tmp_path / "first", CONSUL_HTTP, CONSUL_PORTS).start()
    stack = Stack(first, tmp_path / "stack", docker_client, f"{SESSION}bk", PORT, service=SERVICE).start()
    second = again = None
    try:
        stack.deploy("v1", "demo:v1")
        stack.wait(lambda: stack.served_version() == "v1", 60, "v1 served")
        assert stack.gatekeeper_cli("mode", SERVICE, "manual")[0] == 0
        stack.deploy("v2", "demo:v2")
        stack.wait(lambda: (lambda r: r and r.admitted)(stack.instance(stack.containers["v2"])), 60, "v2 admitted")
        before = state(stack)
        assert before["policy"]["mode"] == "manual" and before["policy"]["stable"] == "v1" and len(before["verdicts"]) == 2 and before["history"]

        saved = tmp_path / "proxystack.backup"
        code, out, err = backup("save", str(saved), "--consul", first.address, "--tokens", str(first.tokens))
        assert code == 0 and "keep it where only you can read it" in out, err
        assert saved.stat().st_mode & 0o077 == 0, "a backup holds every token: its owner's only"
        code, out, _ = backup("check", str(saved))
        assert code == 0 and "bootstrap.token" in out and "gatekeeper.token" in out, out

        # The stack is lost: its daemons, nginx, Consul with its data and its token files. The
        # containers run on.
        for p in (stack.reloader, stack.gatekeeper, stack.registrator):
            p.stop()
        stack.nginx.stop()
        first.stop()
        old_management = first.management_token
        shutil.rmtree(tmp_path / "first")
        second = ConsulServer(tmp_path / "second", CONSUL_HTTP, CONSUL_PORTS).start()
        assert second.management_token != old_management

        # bad input changes nothing
        (tmp_path / "not-a-backup").write_text("hello")
        code, _, err = backup("restore", str(tmp_path / "not-a-backup"), "--consul", second.address,
                              "--tokens", str(second.tokens))
        assert code == 2 and "is not a proxystack backup" in err, err
        assert second.management_token != old_management

        code, out, err = backup("restore", str(saved), "--consul", second.address, "--tokens", str(second.tokens))
        assert code == 0 and "restored" in out, err
        assert second.management_token == old_management, "the backup's tokens are the valid ones now"

        again = Stack(second, tmp_path / "again", docker_client, f"{SESSION}bk", PORT, service=SERVICE)
        again.containers = stack.containers
        again.start()
        again.wait(lambda: again.served_version() == "v1", 60, "v1 served again, as before the loss")
        again.wait(lambda: all(ri.admitted for ri in again.stores.instances.of(SERVICE))
                   and len(again.stores.instances.of(SERVICE)) == 2, 60, "both instances admitted again")
        after = state(again)
        assert after == before
        assert "testing" not in again.gatekeeper.log(), "a restored verdict was tested again"
        # and what comes after the restore reaches the catalog: the fresh agent (a new node ID under
        # the snapshot's node name) syncs again
        probe = {"ID": f"{SERVICE}-probe", "Name": f"{SERVICE}-probe", "Address": "127.0.0.1", "Port": 1}
        again.stores.consul.register_service(probe)
        again.wait(lambda: f"{SERVICE}-probe" in again.stores.consul.catalog_services(), 30,
                   "a service registered after the restore in the catalog")
        again.stores.consul.deregister_service(probe["ID"])
    finally:
        try:
            (again or stack).stop()
        except Exception:           # the Consul it would clean up after may be gone: the test's error counts
            stack.remove_containers()
        for consul in (second, first):
            if consul is not None:
                consul.stop()
