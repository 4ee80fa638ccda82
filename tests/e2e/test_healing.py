"""Self-healing of plain containers on the real stack: an admitted instance whose /health starts
failing leaves traffic, is restarted through the Engine API, tested again (a new verdict for
the new run) and comes back; one that keeps failing is given up on, and says so."""
from __future__ import annotations

import time

import pytest

from tests.conftest import SESSION
from testbed.load import KeepAliveLoad
from testbed.processes import get_json
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORT = 18022
HEALTH = {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "1s", "SERVICE_CHECK_TIMEOUT": "1s"}


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    s = Stack(consul_server, tmp_path_factory.mktemp("healing"), docker_client, f"{SESSION}hl", PORT,
              drain_seconds=1, service="heal",
              gatekeeper_args=("--heal-after", "2", "--heal-backoff", "1", "--heal-tries", "2")).start()
    yield s
    s.stop()


def started(container) -> str:
    container.reload()
    return container.attrs["State"]["StartedAt"]


def test_a_container_gone_unhealthy_is_restarted_retested_and_back_with_no_failed_request(stack):
    a = stack.deploy("a", "demo:v1", restart_policy={"Name": "unless-stopped"}, **HEALTH)
    b = stack.deploy("b", "demo:v1", restart_policy={"Name": "unless-stopped"}, **HEALTH)
    stack.wait(lambda: all(stack.instance(c) and stack.instance(c).admitted for c in (a, b)), 120, "both admitted")
    stack.wait(lambda: stack.proxy_serves([a, b]), 10, "the proxy to serve both")   # what the load will meet
    first_run = started(a)
    first_verdict = stack.stores.verdicts.get(stack.instance(a).instance.id)
    load = KeepAliveLoad("127.0.0.1", PORT, connections=10, rate=10).start()
    try:
        port = stack.instance(a).instance.port
        assert get_json(port, "/health/fail", method="POST")[0] == 200
        stack.wait(lambda: not (stack.instance(a) and stack.instance(a).admitted), 10, "a out of traffic")
        stack.wait(lambda: started(a) != first_run, 30, "a restarted by the healer")
        stack.wait(lambda: stack.instance(a) and stack.instance(a).admitted, 60, "a tested again and admitted")
        time.sleep(1)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert load.versions["v1"] > 100
    verdict = stack.stores.verdicts.get(stack.instance(a).instance.id)
    assert verdict.container_started == started(a) != first_verdict.container_started
    assert verdict.finished > first_verdict.finished                 # a new verdict, not the stored one
    history = stack.gatekeeper_cli("history", "heal")[1]
    assert "healing: restarted" in history and "restart 1 of 2" in history, history


def test_a_crash_looping_container_is_given_up_on_with_a_clear_status(stack):
    c = stack.deploy("loop", "demo:v1", restart_policy={"Name": "always"},
                     environment={"DEMO_HEALTH_FAIL_AFTER": "2"}, **HEALTH)
    runs = {started(c)}

    def gave_up():
        runs.add(started(c))
        ri = stack.instance(c)
        record = ri and stack.stores.healing.get(ri.instance.id)
        return record and record.get("gave_up")
    stack.wait(gave_up, 120, "the healer to give up")
    assert len(runs) == 3, runs                                       # the first run and two restarts
    code, out, err = stack.gatekeeper_cli("status", "heal")
    assert "GAVE UP: gave up healing: restarted 2 times" in out, out + err
    ri = stack.instance(c)
    assert ri.gate_status == "critical" and ri.gate_output.startswith("gave up healing"), ri   # the Consul UI says so
    time.sleep(4)
    assert started(c) in runs, "no restart after giving up"
    assert "healing: gave up" in stack.gatekeeper_cli("history", "heal")[1]


def test_a_restart_asked_while_the_hosts_registrator_is_down_is_taken_back_when_the_instance_heals(stack):
    """The container stalls (paused: its health check times out) while registrator is down, so the
    healer's restart waits in KV; it recovers on its own (unpaused, the same run) before registrator
    is back. The restart is taken back, and the registrator that comes back leaves it running."""
    c = stack.deploy("stall", "demo:v1", restart_policy={"Name": "unless-stopped"}, **HEALTH)
    stack.wait(lambda: stack.instance(c) and stack.instance(c).admitted, 120, "admitted")
    run, inst = started(c), stack.instance(c).instance

    def asked():
        return stack.stores.node_records.actions(inst.node)[1].get(inst.id)

    def restart_asked():
        record = asked()
        return record if record and record.action == "restart" else None
    stack.registrator.kill()                       # SIGKILL: its instances stay, the agent checks them
    c.pause()
    try:
        record = stack.wait(restart_asked, 30, "the healer to ask for a restart")
    finally:
        c.unpause()
    assert (record.container_id, record.started) == (c.id, run)
    stack.wait(lambda: stack.instance(c).admitted, 30, "healthy and admitted again, the same run")
    stack.wait(lambda: "healing: restart taken back" in stack.gatekeeper_cli("history", "heal")[1], 20,
               "the restart taken back")
    assert asked() is None
    offset = len(stack.registrator.log())
    stack.registrator = stack._registrator().start()
    stack.wait(lambda: "sync:" in stack.registrator.log()[offset:], 30, "the restarted registrator's resync")
    time.sleep(3)
    assert started(c) == run, "restarted although it had healed"
    assert stack.instance(c).admitted and f"{inst.id}: restart asked" not in stack.registrator.log()[offset:]
