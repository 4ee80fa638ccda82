"""The Docker adapter against the real engine (twin of tests/support/fakes.FakeDocker)."""
import threading
import time

from registrator.docker_source import DockerSource
from tests.conftest import host_port


def test_inspect_reports_name_labels_and_published_loopback_port(docker_client, demo_images, run_container):
    c = run_container("demo:v1", labels={"SERVICE_NAME": "demo"}, environment={"SERVICE_TAGS": "x"})
    src = DockerSource()
    info = src.inspect(c.id)
    assert info.name == c.name and info.running and info.image == "demo:v1"
    assert info.labels["SERVICE_NAME"] == "demo" and info.env["SERVICE_TAGS"] == "x"
    [port] = info.ports
    assert (port.container_port, port.host_ip, port.host_port) == (8080, "127.0.0.1", host_port(c))
    assert c.id in src.running_ids()


def test_inspect_of_a_removed_container_is_none(docker_client, demo_images, run_container):
    c = run_container("demo:v1")
    c.remove(force=True)
    assert DockerSource().inspect(c.id) is None


def test_events_arrive_for_start_and_die(docker_client, demo_images, run_container):
    src, events, ready, stop = DockerSource(), [], threading.Event(), threading.Event()
    t = threading.Thread(target=src.stream_events, args=(events.append, ready, stop), daemon=True)
    t.start()
    assert ready.wait(10)
    c = run_container("demo:v1")
    c.stop(timeout=5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not {"start", "die"} <= {e.action for e in events if e.container_id == c.id}:
        time.sleep(0.1)
    stop.set()
    actions = [e.action for e in events if e.container_id == c.id]
    assert "start" in actions and "die" in actions and actions.index("start") < actions.index("die")


def test_actions_reach_the_named_run_only(docker_client, demo_images, run_container):
    """What registrator does for gatekeeper's container actions (registrator.actions)."""
    src = DockerSource()
    c = run_container("demo:v1", restart_policy={"Name": "unless-stopped"})
    first = src.inspect(c.id)
    assert first.restart_policy == "unless-stopped"
    assert src.carry_out("restart", c.id, first.started_at, timeout=5) == "restarted"
    second = src.inspect(c.id)
    assert second.running and second.started_at != first.started_at, "a restart is a new run"
    assert src.carry_out("stop", c.id, first.started_at, timeout=5) == "not running that run any more"
    assert src.inspect(c.id).running, "a record made for the earlier run stops nothing"
    assert src.carry_out("stop", c.id, second.started_at, timeout=5) == "stopped"
    assert not src.inspect(c.id).running
    assert src.carry_out("kill", c.id, second.started_at) == "not running that run any more"
    # a start (a rollback to a drained version): only while stopped after the run the record names
    assert src.carry_out("start", c.id, first.started_at) == "started and stopped again since that run; not started"
    assert not src.inspect(c.id).running
    assert src.carry_out("start", c.id, second.started_at) == "started"
    third = src.inspect(c.id)
    assert third.running and third.started_at != second.started_at
    assert src.carry_out("start", c.id, second.started_at) == "running another run since that one; not started"
    assert src.carry_out("start", c.id, third.started_at) == "running already"
    # a remove (drained too many versions ago): only while the last run is the one drained
    assert src.carry_out("remove", c.id, second.started_at) == "running another run since that one; not removed"
    assert src.inspect(c.id).running
    c.stop(timeout=5)
    assert src.carry_out("remove", c.id, second.started_at) == "started and stopped again since that run; not removed"
    assert src.carry_out("remove", c.id, third.started_at) == "removed"
    assert src.inspect(c.id) is None
    # the drained run still stopping when its remove comes: stopped, then removed
    d = run_container("demo:v1")
    run = src.inspect(d.id).started_at
    assert src.carry_out("remove", d.id, run, timeout=5) == "removed" and src.inspect(d.id) is None
    assert src.carry_out("kill", c.id, second.started_at) == "gone already"
    assert src.carry_out("start", c.id, second.started_at) == "gone already"


def test_a_published_udp_port_is_read_as_udp_and_registered_marked(docker_client, demo_images, run_container):
    """The engine's own answer for `-p 8080 -p 5353/udp`: two endpoints, the UDP one marked
    (tag udp, id suffix :udp), so the proxy never routes HTTP to it (registrator.translate)."""
    from registrator.translate import Settings, instances_for
    c = run_container("demo:v1", labels={"SERVICE_NAME": "dual"}, ports={"8080/tcp": None, "5353/udp": None})
    seen = DockerSource().inspect(c.id)
    assert {(p.container_port, p.protocol) for p in seen.ports} >= {(8080, "tcp"), (5353, "udp")}
    by_port = {i.id.split(":", 2)[2]: i for i in instances_for(seen, Settings(hostname="h"))}
    assert by_port["5353:udp"].udp and not by_port["8080"].udp


def test_an_engine_that_does_not_answer_is_waited_for_and_a_bad_address_refused_at_once(tmp_path):
    import pytest

    from catalog.engine import EngineNotUp, engine_client
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="foo://nowhere: not a Docker Engine address"):
        DockerSource("foo://nowhere")
    assert time.monotonic() - t0 < 2, "an address no engine can have is not waited for"
    with pytest.raises(EngineNotUp, match="no answer from unix://"):
        engine_client(f"unix://{tmp_path}/docker.sock", attempts=2)


def test_an_engine_socket_this_user_may_not_open_is_refused_at_once_with_what_to_do(tmp_path):
    """Waiting would never help: a user outside the docker group is told so, not kept waiting.
    Tried from a forked child that has become another user (the interpreter is already loaded)."""
    import os
    import socket

    import pytest

    from catalog.engine import engine_client
    if os.geteuid() != 0:
        pytest.skip("needs root to try the socket as another user")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "docker.sock"))
    sock.listen(1)
    os.chmod(tmp_path / "docker.sock", 0o600)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: nobody
        try:
            os.setgid(65534)
            os.setuid(65534)
            engine_client(f"unix://{tmp_path}/docker.sock", attempts=1, timeout=2)
            said = "connected"
        except BaseException as exc:                # noqa: BLE001 - reported to the parent
            said = f"{type(exc).__name__}: {exc}"
        os.write(write, said.encode()[:4000])
        os._exit(0)
    os.close(write)
    said = os.read(read, 4000).decode()
    os.waitpid(pid, 0)
    sock.close()
    assert said.startswith("ValueError: ") and \
        "permission denied; run as root or as a member of the docker group" in said, said


def test_a_start_asked_while_the_drains_stop_still_runs_is_carried_out_after_it(docker_client, demo_images,
                                                                                run_container, stores, unique):
    """A rollback asked seconds after a drain: its start reaches registrator while the stop waits
    out the container's shutdown (the instance already left the catalog at SIGTERM). The start
    waits for the stop, then starts the container; done at once, it found it running and did nothing."""
    from catalog.model import ContainerAction, Instance
    from registrator.actions import ActionRunner

    src = DockerSource()
    c = run_container("demo:v1", stop_signal="SIGWINCH")          # ignored: a stop waits its whole timeout
    run = src.inspect(c.id).started_at
    by = f"registrator@{unique}"
    inst = Instance(id=f"act:{unique}:8080", service=unique, address="127.0.0.1", port=host_port(c), version="v1",
                    container_id=c.id, container_name=c.name, image="demo:v1", registered_by=by)
    stores.instances.register(inst)
    runner = ActionRunner(stores.instances, stores.node_records, src.carry_out, by, threading.Event())
    try:
        runner.records = {inst.id: ContainerAction("stop", c.id, run, "drained after v2 was promoted", 4, 1.0)}
        assert runner.apply() == 1
        time.sleep(0.5)
        stores.instances.deregister(inst.id)                  # what registrator does at the stop's SIGTERM
        runner.records = {inst.id: ContainerAction("start", c.id, run, "rollback of demo to v1", 10, 2.0)}
        assert runner.apply() == 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (lambda i: i.running and i.started_at != run)(src.inspect(c.id)):
            time.sleep(0.2)
        now = src.inspect(c.id)
        assert now.running and now.started_at != run, "the rollback's start was lost: the container stayed stopped"
    finally:
        stores.instances.deregister(inst.id)
