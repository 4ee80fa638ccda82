"""registrator on the real Docker Engine and Consul: lifecycle, restarts, outages, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
import requests

from tests.conftest import SESSION, TEST_LABEL
from tests.support.images import build_image
from testbed.processes import Proc, python_module, wait_until

FAULT_LABEL = "proxystack.faults"
LABELS = {"SERVICE_NAME": "flt", "gatekeeper.tests": "demo-test:latest", FAULT_LABEL: SESSION}


def start_registrator(consul, base, *extra):
    return Proc("registrator", python_module(
        "registrator", "--consul", consul.address, "--consul-token-file", consul.token_file("registrator"),
        "--hostname", "flt", "--filter-label",
        f"{FAULT_LABEL}={SESSION}", "--resync", "5", *extra), base).start()


@pytest.fixture
def registrator(consul_server, tmp_path, demo_images):
    proc = start_registrator(consul_server, tmp_path)
    yield proc
    proc.stop()


def instance_of(stores, container, service="flt"):
    return next((ri for ri in stores.instances.of(service) if ri.instance.container_id == container.id), None)


def catalog_entry(consul, service):
    return requests.get(f"http://{consul.address}/v1/catalog/service/{service}", timeout=5,
                        headers=consul.headers).json()


def test_docker_stop_takes_the_instance_out_on_kill_before_the_process_exits(stores, registrator, run_container):
    # `sleep` as PID 1 ignores SIGTERM, so the container lives until docker stop's SIGKILL.
    c = run_container("demo:v1", labels=LABELS, command=["sleep", "60"])
    wait_until(lambda: instance_of(stores, c), 20, "registration")
    stopper = threading.Thread(target=lambda: c.stop(timeout=6), daemon=True)
    t0 = time.monotonic()
    stopper.start()
    wait_until(lambda: instance_of(stores, c) is None, 5, "deregistration on the kill event")
    out_after = time.monotonic() - t0
    c.reload()
    assert c.status == "running", "the instance must leave before the process exits"
    assert out_after < 3.0
    stopper.join(15)


def test_a_rm_container_gone_before_inspection_leaves_nothing(stores, registrator, run_container, consul_server):
    wait_until(lambda: "sync:" in registrator.log(), 20, "registrator subscribed and synced")
    c = run_container("demo:v1", labels=LABELS, command=["true"], auto_remove=True)
    # Events are handled in order: once a container started after it is registered, the --rm
    # container's start and die events have been handled too.
    marker = run_container("demo:v1", labels=LABELS)
    wait_until(lambda: instance_of(stores, marker), 20, "the next container's registration")
    assert instance_of(stores, c) is None
    assert registrator.alive() and "Traceback" not in registrator.log()


def test_a_restart_policy_respawn_is_registered_again(stores, registrator, run_container):
    c = run_container("demo:v1", labels=LABELS, command=["sh", "-c", "sleep 2; exit 1"],
                      restart_policy={"Name": "on-failure", "MaximumRetryCount": 3})
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and seen[-3:] != [True, False, True]:
        now = instance_of(stores, c) is not None
        if not seen or seen[-1] != now:
            seen.append(now)
        time.sleep(0.05)
    assert seen[-3:] == [True, False, True], f"registered/deregistered sequence: {seen}"


def test_sigterm_leaves_registrations_and_cleanup_on_exit_removes_them(stores, consul_server, tmp_path, run_container):
    c = run_container("demo:v1", labels=LABELS)
    reg = start_registrator(consul_server, tmp_path)
    wait_until(lambda: instance_of(stores, c), 20, "registration")
    reg.stop()
    assert instance_of(stores, c) is not None, "SIGTERM must leave registrations in place"
    reg = start_registrator(consul_server, tmp_path, "--cleanup-on-exit")
    wait_until(lambda: reg.log().count("sync:") >= 2, 20, "the second registrator's first sync")
    reg.stop()
    assert instance_of(stores, c) is None


def test_a_registrator_started_before_its_engine_waits_for_it_then_registers(
        stores, consul_server, tmp_path, run_container):
    """A host's boot: registrator comes up before dockerd answers. It says it waits, and once
    the engine answers (here: its socket appears where --docker points) it syncs and registers."""
    engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not engine.startswith("unix://"):
        pytest.skip(f"the engine is reached at {engine}: this test points registrator at a unix socket")
    c = run_container("demo:v1", labels=LABELS)
    socket = tmp_path / "engine.sock"
    reg = start_registrator(consul_server, tmp_path, "--docker", f"unix://{socket}")
    try:
        wait_until(lambda: "connecting to the Docker Engine (registrator) failed" in reg.log(), 20,
                   "registrator saying it waits for the engine")
        assert reg.alive() and instance_of(stores, c) is None
        socket.symlink_to(engine.removeprefix("unix://"))
        wait_until(lambda: instance_of(stores, c), 30, "registration once the engine answers")
        assert "Traceback" not in reg.log(), reg.log()[-2000:]
    finally:
        reg.stop()


def test_a_docker_address_no_engine_can_have_is_refused_at_once(consul_server, tmp_path):
    out = subprocess.run(python_module(
        "registrator", "--consul", consul_server.address, "--consul-token-file", consul_server.token_file("registrator"),
        "--docker", "foo://nowhere"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "foo://nowhere: not a Docker Engine address" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_sigkill_and_restart_removes_own_stale_adds_missed_and_touches_nothing_else(
        stores, consul_server, tmp_path, run_container):
    keep = run_container("demo:v1", labels=LABELS)
    gone = run_container("demo:v1", labels=LABELS)
    reg = start_registrator(consul_server, tmp_path)
    wait_until(lambda: instance_of(stores, keep) and instance_of(stores, gone), 20, "both registered")
    kept = instance_of(stores, keep).instance
    stores.node_records.set_gate(kept, True, "9/9 passed (set by this test)")         # as gatekeeper decides it
    wait_until(lambda: instance_of(stores, keep).gate_status == "passing", 20, "registrator applying the gate")
    before = {e["ServiceID"]: e["ModifyIndex"] for e in catalog_entry(consul_server, "flt")}
    reg.kill()
    gone.remove(force=True)
    missed = run_container("demo:v1", labels=LABELS)
    reg = start_registrator(consul_server, tmp_path)
    try:
        wait_until(lambda: instance_of(stores, missed) and instance_of(stores, gone) is None, 20,
                   "the resync after the restart")
        time.sleep(1)
        after = {e["ServiceID"]: e["ModifyIndex"] for e in catalog_entry(consul_server, "flt")}
        assert after[kept.id] == before[kept.id], "an unchanged instance must not be re-registered"
        ri = instance_of(stores, keep)
        assert ri.gate_status == "passing" and ri.gate_output.startswith("9/9 passed")
        assert sorted(after) == sorted([kept.id, instance_of(stores, missed).instance.id])
    finally:
        reg.stop()


def test_invalid_label_is_rejected_logged_recorded_and_secrets_stay_out(stores, registrator, run_container, consul_server):
    c = run_container("demo:v1", labels={**LABELS, "proxy.path": "/x; return 200 pwned;/"},
                      environment={"SERVICE_DB_PASSWORD": "hunter2-secret"})
    ok = run_container("demo:v1", labels=LABELS, environment={"SERVICE_DB_PASSWORD": "hunter2-secret",
                                                              "SERVICE_REGION": "eu-1"})
    wait_until(lambda: instance_of(stores, ok), 20, "the valid container's registration")
    wait_until(lambda: c.name in stores.rejections.all(), 10, "the rejection in KV")
    assert instance_of(stores, c) is None
    log = registrator.log()
    assert c.name in log and "proxy.path" in log and "absolute path" in log
    assert "hunter2" not in log
    meta = instance_of(stores, ok).instance.meta()
    assert meta["region"] == "eu-1" and "hunter2" not in json.dumps(meta)
    status = subprocess.run(python_module("gatekeeper", "--consul", consul_server.address, "--consul-token-file",
                                          consul_server.token_file("operator"), "status", "--json"),
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert "proxy.path" in json.loads(status.stdout)["rejected"][c.name]["reason"]


def build_healthcheck_image(docker_client):
    """demo:v1 with a HEALTHCHECK the test steers: healthy once /tmp/ready exists, unhealthy
    once /tmp/sick does."""
    return build_image(docker_client, f"proxystack-healthcheck:{SESSION}",
                       "FROM demo:v1\nHEALTHCHECK --interval=1s --timeout=2s --retries=1 --start-period=120s "
                       "CMD test -e /tmp/ready && test ! -e /tmp/sick\n", {TEST_LABEL: SESSION})


def test_a_docker_healthcheck_gates_testing_and_admission(stores, registrator, run_container, docker_client,
                                                          consul_server, tmp_path):
    tag = build_healthcheck_image(docker_client)
    gk = Proc("gatekeeper", python_module("gatekeeper", "--consul", consul_server.address, "--consul-token-file",
                                          consul_server.token_file("gatekeeper"), "run", "--wait", "2",
                                          "--keep-old", "--test-label", f"{TEST_LABEL}={SESSION}"), tmp_path).start()
    try:
        # First prove this gatekeeper leads and tests what arrives, so that "not tested" below
        # means "waiting for health", not "nobody was watching".
        probe = run_container("demo:v1", labels=LABELS)
        wait_until(lambda: instance_of(stores, probe) and stores.verdicts.get(instance_of(stores, probe).instance.id),
                   60, "a plain container tested by this gatekeeper")
        c = run_container(tag, labels=LABELS)
        ri = wait_until(lambda: instance_of(stores, c), 20, "registration")
        assert ri.checks[ri.instance.docker_health_check_id] == "critical"
        time.sleep(3)
        assert stores.verdicts.get(ri.instance.id) is None, "no test before Docker reports healthy"
        c.exec_run(["touch", "/tmp/ready"])
        wait_until(lambda: instance_of(stores, c).admitted, 60, "healthy, tested and admitted")
        assert stores.verdicts.get(ri.instance.id).state == "passed"
        c.exec_run(["touch", "/tmp/sick"])
        wait_until(lambda: not instance_of(stores, c).admitted, 20, "unhealthy -> out of traffic")
        assert instance_of(stores, c).gate_status == "passing", "the verdict stands; Docker health is separate"
    finally:
        gk.stop()
        docker_client.images.remove(tag, force=True)


def test_consul_down_for_10_seconds_loses_nothing(stores, registrator, run_container, consul_server):
    before = run_container("demo:v1", labels=LABELS)
    wait_until(lambda: instance_of(stores, before), 20, "registration")
    consul_server.stop()
    try:
        during = run_container("demo:v1", labels=LABELS)
        time.sleep(10)
    finally:
        consul_server.start()
    wait_until(lambda: instance_of(stores, during) and instance_of(stores, before), 60,
               "both registered once Consul is back")
    assert registrator.alive()


def test_a_renamed_container_is_registered_once_under_its_new_name(stores, registrator, run_container):
    c = run_container("demo:v1", labels=LABELS)
    wait_until(lambda: instance_of(stores, c), 20, "registration")
    c.rename(c.name + "-renamed")
    wait_until(lambda: (lambda ri: ri and ri.instance.container_name.endswith("-renamed"))(instance_of(stores, c)),
               20, "the new name")
    ids = [ri.instance.id for ri in stores.instances.of("flt") if ri.instance.container_id == c.id]
    assert ids == [f"flt:{c.name}-renamed:8080"]


def test_a_rejection_names_its_service_goes_when_fixed_and_is_forgotten_after_its_container(
        stores, run_container, consul_server, tmp_path, docker_client):
    reg = start_registrator(consul_server, tmp_path, "--forget-after", "2")
    try:
        bad = {**LABELS, "proxy.path": "/a b/"}
        kept = run_container("demo:v1", labels=bad)
        fixed_name = f"pst-{SESSION}-fixme"
        broken = run_container("demo:v1", labels=bad, name=fixed_name)
        wait_until(lambda: {kept.name, fixed_name} <= set(stores.rejections.all()), 20, "both rejections in KV")
        rej = stores.rejections.all()[fixed_name]
        assert rej.service == "flt" and rej.container_id == broken.id and "proxy.path" in rej.reason
        broken.remove(force=True)
        fixed = run_container("demo:v1", labels=LABELS, name=fixed_name)      # the same name, fixed
        wait_until(lambda: instance_of(stores, fixed), 20, "the fixed container's registration")
        wait_until(lambda: fixed_name not in stores.rejections.all(), 10, "its rejection replaced by the registration")
        gone = run_container("demo:v1", labels=bad)
        wait_until(lambda: gone.name in stores.rejections.all(), 20, "the third rejection")
        gone.remove(force=True)
        wait_until(lambda: gone.name not in stores.rejections.all(), 15, "a gone container's record forgotten")
        assert kept.name in stores.rejections.all(), "a running container keeps its rejection however old"
        assert "forgot the rejection of container " + gone.name in reg.log()
    finally:
        reg.stop()


def test_explicit_mode_logs_each_skipped_container_once_with_the_reason(stores, run_container, consul_server,
                                                                        tmp_path):
    reg = start_registrator(consul_server, tmp_path, "--explicit")
    try:
        wait_until(lambda: "sync:" in reg.log(), 20, "the first sync")
        labels = {k: v for k, v in LABELS.items() if k != "SERVICE_NAME"}
        c = run_container("demo:v1", labels={**labels, "proxy.path": "/a b/"})
        ignored = run_container("demo:v1", labels={**LABELS, "SERVICE_IGNORE": "false"})
        wait_until(lambda: c.name in reg.log() and ignored.name in reg.log(), 20, "the skip log lines")
        wait_until(lambda: reg.log().count("sync:") >= 3, 20, "two more syncs (--resync 5)")
        log = reg.log()
        assert log.count(f"container {c.name} ({c.id[:12]}) skipped: it has no SERVICE_NAME and registrator "
                         "runs with --explicit") == 1, log[-2000:]
        assert log.count(f"container {ignored.name} ({ignored.id[:12]}) skipped: SERVICE_IGNORE is set "
                         "(to 'false'") == 1, log[-2000:]
        assert instance_of(stores, c) is None and instance_of(stores, ignored) is None
        assert c.name not in stores.rejections.all(), "a skipped container is not a rejected one"
    finally:
        reg.stop()


def test_a_container_started_during_the_first_sync_is_registered_from_its_queued_event(
        stores, run_container, consul_server, tmp_path):
    """The Engine lists the containers before this one starts; the sync that follows takes 3 s
    to get that list. Only the start event, queued while the sync runs, can register it."""
    from tests.support.slow_docker import SlowListDocker
    relay = SlowListDocker(tmp_path / "docker.sock", delay=3.0).start()
    reg = start_registrator(consul_server, tmp_path, "--docker", relay.url)
    try:
        wait_until(lambda: relay.lists_held >= 1, 20, "registrator's first container list")
        c = run_container("demo:v1", labels=LABELS)
        assert "sync:" not in reg.log(), "the container must start while the first sync still runs"
        wait_until(lambda: instance_of(stores, c), 20, "the registration from the queued start event")
        log = reg.log()
        assert log.index("sync:") < log.index(f"registered flt:{c.name}:8080"), \
            "registered after the sync, by the event"
        assert log.count("sync:") == 1
    finally:
        reg.stop()
        relay.stop()
