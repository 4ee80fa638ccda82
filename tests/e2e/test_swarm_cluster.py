"""One swarm across the namespace cluster's three hosts (scripts/cluster.sh swarm), every engine a
manager: a Swarm service's tasks run on every host, each is tested through the gate by the leading
gatekeeper, its gate marker is written by its own host's registrator, and Swarm's rolling update
goes task by task across hosts only as fast as new tasks pass; a broken image is rolled back, and
a manager host stopped mid-update has its tasks rescheduled and gated on the others; scaled out
and in from any manager, a sick task on one host healed and a killed one replaced, each new task
gated. Under kept-alive traffic through every host's proxy, with 0 failed requests."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from catalog.model import GATE_MIRROR_HEALTH_CMD
from testbed.cluster import DEMO_LABELS, STATE, host_ip, keepalive_loads
from testbed.processes import ROOT

# A rolling update of three tasks, a rollback, a host stopped mid-update: minutes, not the usual 180 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NAME = "demo"                      # the Swarm service, registered as the cluster's demo service


def hdocker(host: str, *args: str, timeout: float = 120) -> str:
    res = subprocess.run(["docker", "-H", f"unix:///run/psc-{host}/docker.sock", *args], capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"docker -H {host} {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


@pytest.fixture(scope="module")
def swarm(namespace_cluster):
    """The cluster's engines joined in one swarm; left again afterwards, as the module found it."""
    cluster = namespace_cluster
    cluster.sh("swarm")
    try:
        yield cluster
    finally:
        services = hdocker("h1", "service", "ls", "-q", "--filter", "label=proxystack.demo=1").split()
        if services:
            hdocker("h1", "service", "rm", *services)
        cluster.wait(lambda: not cluster.instances(), 90, "the tasks' instances to leave Consul")
        cluster.stores().forget_service(NAME)            # its policy and history: the next module starts afresh
        for h in reversed(cluster.hosts):
            hdocker(h, "swarm", "leave", "--force")


def create(version: str = "v1", replicas: int = 3, **extra_labels: str) -> None:
    labels = [a for k, v in {**DEMO_LABELS, **extra_labels}.items() for a in ("--container-label", f"{k}={v}")]
    hdocker("h1", "service", "create", "--detach", "--name", NAME, "--replicas", str(replicas),
            "--publish", "mode=host,target=8080", *labels, "--label", "proxystack.demo=1",
            "--placement-pref", "spread=node.labels.host",
            "--health-cmd", GATE_MIRROR_HEALTH_CMD, "--health-interval", "1s", "--health-retries", "3",
            "--health-start-period", "120s", "--update-order", "start-first", "--update-failure-action", "rollback",
            "--restart-delay", "1s", "--no-resolve-image", f"demo:{version}")


def admitted(cluster, version: str):
    return [ri for ri in cluster.instances() if ri.admitted and ri.instance.version == version
            and ri.instance.swarm_service == NAME]


def wait_serving(cluster, version: str) -> None:
    """Until every proxy routes exactly the admitted tasks of `version`."""
    cluster.wait_routed({f"{ri.instance.address}:{ri.instance.port}" for ri in admitted(cluster, version)}, timeout=60)


def running_images(host: str = "h1"):
    out = hdocker(host, "service", "ps", NAME, "--filter", "desired-state=running", "--format", "{{.Image}} {{.CurrentState}}")
    return [line.split()[0] for line in out.splitlines() if " Running " in f" {line} "]


def update_state(host: str = "h1") -> str:
    raw = hdocker(host, "service", "inspect", NAME, "--format", "{{json .UpdateStatus}}")
    return (json.loads(raw) if raw and raw != "null" else {}).get("State", "")


def swarm_wait(cluster, cond, timeout: float, what: str) -> None:
    """cluster.wait, and on a time-out what Swarm and the catalog said last."""
    try:
        cluster.wait(cond, timeout, what, logs=("gatekeeper-h1", "gatekeeper-h2"))
    except AssertionError as exc:
        tasks = hdocker("h1", "service", "ps", NAME, "--no-trunc", "--format",
                        "{{.Name}} {{.Node}} {{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}")
        seen = "\n".join(f"{ri.instance.id} {ri.instance.version} admitted={ri.admitted}" for ri in cluster.instances())
        raise AssertionError(f"{exc}\n--- tasks\n{tasks}\n--- instances\n{seen}\n--- Swarm's update state: "
                             f"{update_state() or 'none'}; running: {running_images()}") from None


def failures(loads) -> dict:
    """{host: (failed requests, of how many, the first three, what its nginx logged about its
    upstreams last)} of each host's load; () for none."""
    out = {}
    for h, load in loads.items():
        load.finish()
        if load.failures:
            log = STATE / h / "nginx" / "logs" / "error.log"
            upstreams = [line for line in (log.read_text(errors="replace").splitlines() if log.exists() else [])
                         if "upstream" in line][-6:]
            out[h] = (len(load.failures), load.total, load.failures[:3], upstreams)
        else:
            out[h] = ()
    return out


def test_a_rolling_update_across_hosts_waits_for_each_tasks_gate_and_a_broken_one_rolls_back(swarm):
    cluster = swarm
    create("v1")
    cluster.wait(lambda: {ri.instance.node for ri in admitted(cluster, "v1")} == set(cluster.hosts)
                 and len(admitted(cluster, "v1")) == 3, 180, "a gated v1 task on every host",
                 logs=("gatekeeper-h1", "gatekeeper-h2", "registrator-h3"))
    wait_serving(cluster, "v1")
    loads = keepalive_loads(cluster.hosts)
    try:
        hdocker("h2", "service", "update", "--detach", "--image", "demo:v2", NAME)      # from another manager
        cluster.wait(lambda: len(admitted(cluster, "v2")) == 3 and running_images() == ["demo:v2"] * 3
                     and update_state() == "completed", 300, "every task replaced by a gated v2 one",
                     logs=("gatekeeper-h1", "gatekeeper-h2"))
        wait_serving(cluster, "v2")
        for h in cluster.hosts:          # each host's registrator opened its own v2 task's marker
            assert any("gate marker open" in line and f"{h}:{NAME}." in line
                       for line in cluster.logs(f"registrator-{h}", 300).splitlines()), cluster.logs(f"registrator-{h}")

        # demo:v3 builds but fails its integration tests: Swarm's update stops at its first task
        hdocker("h3", "service", "update", "--detach", "--image", "demo:v3", NAME)
        cluster.wait(lambda: update_state().startswith("rollback"), 180, "Swarm to roll the update back",
                     logs=("gatekeeper-h1", "gatekeeper-h2"))
        cluster.wait(lambda: update_state() == "rollback_completed" and running_images() == ["demo:v2"] * 3
                     and len(admitted(cluster, "v2")) == 3
                     and not any(ri.instance.version == "v3" for ri in cluster.instances()), 180,
                     "three gated v2 tasks again, no v3 left")
        wait_serving(cluster, "v2")
        time.sleep(2)
    finally:
        failed = failures(loads)
    assert all(not f for f in failed.values()), failed
    assert all(load.versions.keys() <= {"v1", "v2"} for load in loads.values()), "v3 never served"
    rolled_back = [e for e in cluster.stores().history.of(NAME) if e.get("event") == "update rolled back"]
    assert rolled_back and rolled_back[-1].get("image") == "demo:v3", rolled_back


def test_a_manager_host_stopped_mid_update_loses_no_request_and_the_update_ends_once_it_is_back(swarm):
    """The other two managers keep the swarm's quorum; h3's tasks leave the other proxies once
    Consul marks it failed, the replacements Swarm starts on h1 and h2 are each gated, and their
    proxies serve only gated instances, with 0 failed requests. How far the update gets without
    h3 is Swarm's to say (a slot whose old task ran on h3 may wait for it). How the
    update ends is Swarm's to say: a new task that died with the host within the update's monitor
    period counts as a failure (then --update-failure-action rollback takes it back), else it
    completes once the host is back; a task that fails during that rollback pauses it (Swarm's
    --rollback-failure-action, pause by default, waits for an operator). Any of these ends it
    with three gated tasks of one version, and that version is what every proxy serves."""
    cluster = swarm
    if not admitted(cluster, "v2"):
        create("v2")
    cluster.wait(lambda: len(admitted(cluster, "v2")) == 3 and running_images() == ["demo:v2"] * 3, 240,
                 "three gated v2 tasks")
    survivors = ["h1", "h2"]
    loads = keepalive_loads(survivors)
    try:
        hdocker("h1", "service", "update", "--detach", "--image", "demo:v1", NAME)
        # mid-update, once a new task serves elsewhere: a host that takes the only instance serving
        # with it fails requests through any proxy until a replacement passes its gate
        cluster.wait(lambda: [ri for ri in admitted(cluster, "v1") if ri.instance.node in survivors], 180,
                     "a gated v1 task on h1 or h2")
        # and routed by both proxies left: Consul's gate opens before a proxy applies it
        serving = {f"{ri.instance.address}:{ri.instance.port}" for ri in admitted(cluster, "v1")
                   if ri.instance.node in survivors}
        cluster.wait_routed(serving, hosts=survivors, timeout=60, exactly=False)
        gated = {ri.instance.id for ri in cluster.instances() if ri.admitted}
        cluster.sh("stop-host", "h3")                     # a manager
        # h3's instances leave both proxies once Consul marks the host failed. Swarm goes on where
        # it can (a slot whose old task ran on h3 may wait for h3 to confirm its shutdown); each
        # replacement it starts on h1 or h2 serves only once gated.
        gone = {f"{ri.instance.address}:{ri.instance.port}" for ri in cluster.instances() if ri.instance.node == "h3"}
        swarm_wait(cluster, lambda: all(not set(cluster.routes(h) or ()) & gone for h in survivors), 90,
                   "h3's tasks out of both proxies left")
        for _ in range(20):
            for ri in cluster.instances():               # nothing is served before its gate opened
                gated |= {ri.instance.id} if ri.admitted else set()
                backend = f"{ri.instance.address}:{ri.instance.port}"
                assert ri.instance.id in gated or all(backend not in (cluster.routes(h) or set()) for h in survivors), \
                    ri.instance.id
            time.sleep(1)
    finally:
        failed = failures(loads)
        cluster.sh("start-host", "h3")
    assert all(not f for f in failed.values()), failed
    assert all(load.total > 100 for load in loads.values()), {h: load.total for h, load in loads.items()}
    cluster.wait(lambda: cluster.node_health("h3") == "passing", 60, "h3 back")
    def settled():
        images = running_images()
        version = images[0].split(":")[-1] if images else ""
        return (update_state() in ("completed", "rollback_completed", "paused", "rollback_paused")
                and images == [f"demo:{version}"] * 3
                and len(admitted(cluster, version)) == 3 and len(cluster.instances()) == 3 and version)
    swarm_wait(cluster, settled, 240, "the update to end with three gated tasks of one version once h3 is back")
    version = settled()
    wait_serving(cluster, version)


def gatekeeper_scale(cluster, replicas: int, manager: str) -> str:
    """`gatekeeper scale demo N` as an operator runs it, against a given manager's engine."""
    env = {**cluster.client_env, "DOCKER_HOST": f"unix:///run/psc-{manager}/docker.sock"}
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "gatekeeper"), "--consul", cluster.consul_address(),
                          "--consul-token-file", str(STATE / "tokens" / "operator.token"), "scale", NAME, str(replicas)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_scaled_out_and_in_across_hosts_a_sick_task_healed_and_a_killed_one_replaced_each_through_the_gate(swarm):
    cluster = swarm
    if hdocker("h1", "service", "ls", "-q", "--filter", f"name={NAME}"):
        hdocker("h1", "service", "rm", NAME)
        cluster.wait(lambda: not cluster.instances(), 90, "the previous tasks' instances to leave Consul")
    create("v1", SERVICE_CHECK_HTTP="/health", SERVICE_CHECK_INTERVAL="1s")
    swarm_wait(cluster, lambda: {ri.instance.node for ri in admitted(cluster, "v1")} == set(cluster.hosts)
               and len(admitted(cluster, "v1")) == 3, 180, "a gated task on every host")
    wait_serving(cluster, "v1")
    loads = keepalive_loads(cluster.hosts)
    try:
        # out, from a manager that runs no gatekeeper: each new task gated on its own host
        gatekeeper_scale(cluster, 5, "h3")
        swarm_wait(cluster, lambda: len(admitted(cluster, "v1")) == 5 and len(cluster.instances()) == 5, 180,
                   "five gated tasks")
        wait_serving(cluster, "v1")

        # a task on h3 turns sick: out of traffic at once, replaced by Swarm, the replacement gated
        sick = next(ri.instance for ri in admitted(cluster, "v1") if ri.instance.node == "h3")
        answer = requests.post(f"http://{host_ip('h3')}:{sick.port}/health/fail", timeout=5)
        assert answer.status_code == 200, answer.text
        swarm_wait(cluster, lambda: sick.id not in {ri.instance.id for ri in admitted(cluster, "v1")}, 15,
                   "the sick task out of traffic")
        swarm_wait(cluster, lambda: sick.id not in {ri.instance.id for ri in cluster.instances()}
                   and len(admitted(cluster, "v1")) == 5, 180, "the sick task replaced by a gated one")

        # a task on h2 killed: Swarm starts another, which passes its gate before it serves
        victim = next(ri.instance for ri in admitted(cluster, "v1") if ri.instance.node == "h2")
        hdocker("h2", "kill", victim.container_id)
        swarm_wait(cluster, lambda: victim.id not in {ri.instance.id for ri in cluster.instances()}
                   and len(admitted(cluster, "v1")) == 5, 180, "the killed task replaced by a gated one")
        for ri in admitted(cluster, "v1"):
            verdict = cluster.stores().verdicts.get(ri.instance.id)
            assert verdict and verdict.container_id == ri.instance.container_id, (ri.instance.id, verdict)
        wait_serving(cluster, "v1")

        # and in again
        gatekeeper_scale(cluster, 3, "h2")
        swarm_wait(cluster, lambda: len(cluster.instances()) == 3 and len(admitted(cluster, "v1")) == 3, 180,
                   "back to three tasks")
        wait_serving(cluster, "v1")
        time.sleep(2)
    finally:
        failed = failures(loads)
    assert all(not f for f in failed.values()), failed
    assert all(load.total > 100 for load in loads.values()), {h: load.total for h, load in loads.items()}
    events = [e.get("event") for e in cluster.stores().history.of(NAME)]
    assert "healing: replaced" in events, events
    print(f"scaled 3 -> 5 -> 3, one task healed on h3, one killed on h2: "
          f"{sum(load.total for load in loads.values())} requests through three proxies, 0 failed")
