"""gatekeeper's test runs against real containers: pass, fail, hang, missing image."""
import json

import pytest

from catalog.model import ERROR, FAILED, PASSED
from gatekeeper.admission.tester import DockerTester, RunLimits
from tests.conftest import SESSION, TEST_LABEL, host_port
from tests.support.images import build_image
from tests.support.no_engine import client_nobody_answers


@pytest.fixture
def tester(docker_client):
    return DockerTester(docker_client, RunLimits(timeout=20), labels={TEST_LABEL: SESSION})


def test_good_instance_passes_with_the_reports_summary(tester, demo_images, run_container):
    c = run_container("demo:v2")
    res = tester.run("demo-test:latest", f"http://127.0.0.1:{host_port(c)}", "t:pass")
    assert res.state == PASSED, res.log_tail
    assert res.summary.startswith("9/9 passed in")
    assert "PASS rec_shape" in res.log_tail


def test_broken_build_fails_and_says_which_checks(tester, demo_images, run_container):
    c = run_container("demo:v3")
    res = tester.run("demo-test:latest", f"http://127.0.0.1:{host_port(c)}", "t:fail")
    assert res.state == FAILED
    assert "failed: rec_shape" in res.summary and "(exit 1)" in res.summary


def test_missing_test_image_is_an_error_not_a_pass(tester):
    res = tester.run("proxystack-no-such-image:never", "http://127.0.0.1:1", "t:missing")
    assert res.state == ERROR and "not on this engine" in res.summary


def test_a_hanging_test_is_killed_at_the_time_limit(docker_client, demo_images):
    tag = build(docker_client, "hang-test", "print('starting', flush=True); import time; time.sleep(600)")
    try:
        tester = DockerTester(docker_client, RunLimits(timeout=3), labels={TEST_LABEL: SESSION})
        res = tester.run(tag, "http://127.0.0.1:1", "t:hang")
        assert res.state == ERROR and "timed out after 3 s" in res.summary and "starting" in res.summary
        assert res.finished - res.started < 20
        tester.close()               # removal runs off the gate's path; close() waits for it
        assert not docker_client.containers.list(all=True, filters={"label": "proxystack.instance=t:hang"})
    finally:
        docker_client.images.remove(tag, force=True)


def build(docker_client, name, entrypoint_py):
    """A test image that runs `entrypoint_py` instead of the demo's integration tests."""
    return build_image(docker_client, f"proxystack-{name}:{SESSION}",
                       f"FROM demo-test:latest\nENTRYPOINT [\"python3\", \"-c\", {json.dumps(entrypoint_py)}]\n",
                       {TEST_LABEL: SESSION})


PROBE = """
import os
checks = []
try:
    open('/probe', 'w'); checks.append('root-writable')
except OSError:
    checks.append('root-read-only')
checks.append('socket-present' if os.path.exists('/var/run/docker.sock') else 'no-docker-socket')
caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]
checks.append('caps-' + caps)
nnp = [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0]
checks.append('nnp-' + nnp)
mem = open('/sys/fs/cgroup/memory.max').read().strip() if os.path.exists('/sys/fs/cgroup/memory.max') else open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip()
checks.append('mem-' + mem)
print(' '.join(checks))
"""


def test_test_containers_are_boxed_in(docker_client, demo_images):
    tag = build(docker_client, "probe", PROBE)
    try:
        res = DockerTester(docker_client, RunLimits(timeout=30, memory="128m"), labels={TEST_LABEL: SESSION}).run(
            tag, "http://127.0.0.1:1", "t:probe")
        assert res.state == PASSED, res.log_tail
        words = res.summary.split()
        assert "root-read-only" in words and "no-docker-socket" in words
        assert "caps-0000000000000000" in words and "nnp-1" in words
        assert f"mem-{128 * 1024 * 1024}" in words
    finally:
        docker_client.images.remove(tag, force=True)


ESCAPE = """
import os, urllib.request
found = []
for port in (8500, 18500):
    try:
        req = urllib.request.Request(f'http://127.0.0.1:{port}/v1/kv/gatekeeper/policies/stolen', data=b'x', method='PUT')
        urllib.request.urlopen(req, timeout=3)
        found.append(f'consul {port}: WRITE ACCEPTED')
    except urllib.error.HTTPError as e:
        found.append(f'consul {port}: {e.code}')
    except OSError:
        found.append(f'consul {port}: unreachable')
try:
    open('/etc/escape', 'w')
    found.append('fs: written')
except OSError as e:
    found.append('fs: ' + e.strerror)
print('0/1 passed; escape attempts: ' + ', '.join(found))
raise SystemExit(1)
"""


def test_a_test_image_that_tries_to_escape_is_contained_and_fails(docker_client, demo_images, consul_server, stores):
    tag = build(docker_client, "escape", ESCAPE)
    try:
        res = DockerTester(docker_client, RunLimits(timeout=30), labels={TEST_LABEL: SESSION}).run(
            tag, "http://127.0.0.1:1", "t:escape")
        assert res.state == FAILED
        assert "consul 18500: 403" in res.summary, res.summary
        assert "WRITE ACCEPTED" not in res.summary and "fs: Read-only file system" in res.summary
        assert stores.consul.kv_get("gatekeeper/policies/stolen")[1] is None
    finally:
        docker_client.images.remove(tag, force=True)


def test_stopping_every_test_while_the_engine_is_away_does_not_end_the_daemon(tmp_path, caplog):
    """Leadership lost, or gatekeeper stopping, while dockerd does not answer: the tests it ran
    cannot be killed now (they go with the engine, or are removed as leftovers later)."""
    gone = client_nobody_answers(tmp_path)
    tester = DockerTester(gone)
    tester.running["0123456789abcdef"] = "h:demo:8080"
    tester.abort_all()
    assert "could not stop test container 0123456789ab" in caplog.text
    tester.close()
