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
