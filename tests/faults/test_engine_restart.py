"""dockerd killed by its pid and started again: registrator reconnects, resyncs, loses nothing.

This restarts the Docker Engine the project's scripts started (.stack/run/dockerd.pid), which
stops every container on it; the suite orders it last (tests/conftest.py)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.conftest import host_port
from tests.faults.test_registrator_lifecycle import LABELS, instance_of, start_registrator
from testbed.processes import ROOT, pid_alive, wait_until

PIDFILE = ROOT / ".stack" / "run" / "dockerd.pid"


@pytest.mark.engine_restart
def test_dockerd_restart_reconnects_and_resyncs(stores, consul_server, tmp_path, run_container, demo_images):
    if not PIDFILE.exists():
        pytest.fail("this test restarts the Docker Engine by its pid and needs the one that "
                    "scripts/install.sh starts (make test does); no .stack/run/dockerd.pid here")
    plain = run_container("demo:v1", labels=LABELS)
    always = run_container("demo:v1", labels=LABELS, restart_policy={"Name": "always"})
    reg = start_registrator(consul_server, tmp_path)
    try:
        wait_until(lambda: instance_of(stores, plain) and instance_of(stores, always), 20, "registration")
        pid = int(PIDFILE.read_text())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), 60, "dockerd to exit")
        subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "docker"], check=True, timeout=120,
                       capture_output=True)
        wait_until(lambda: instance_of(stores, plain) is None, 60, "the stopped container's deregistration")
        ri = wait_until(lambda: instance_of(stores, always), 60, "the restarted container's registration")
        assert ri.instance.port == host_port(always), "registered with the port it has after the restart"
        log = reg.log()
        assert "reconnecting" in log and reg.alive()
    finally:
        reg.stop()
