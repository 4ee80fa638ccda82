"""Swarm services through the gate, on the real Engine in swarm mode, Consul, nginx and
Prometheus: scaling by hand and by load, rolling updates (good and broken), a killed task and
an unhealthy one, each under keep-alive load."""
from __future__ import annotations

import json
import threading
import time

import pytest

from gatekeeper.fleet.swarm import Swarm, SwarmError, SwarmService
from tests.conftest import SESSION
from testbed.load import KeepAliveLoad
from testbed.processes import PrometheusServer, get_json
from testbed.stack import Stack
from testbed.swarm import docker, ensure_swarm, exposed_listeners, gated_service_args, remove_services, tasks

pytestmark = pytest.mark.e2e

PORT, PROMETHEUS = 18020, 18021
SERVICES = ("swscale", "swupdate", "swauto", "swheal", "swmanual", "swowner")


@pytest.fixture(scope="module")
def stack(consul_server, docker_client, demo_images, tmp_path_factory):
    turned_on = ensure_swarm()
    base = tmp_path_factory.mktemp("swarm")
    prometheus = PrometheusServer(base, consul_server, PROMETHEUS).start()
    try:
        s = Stack(consul_server, base, docker_client, f"{SESSION}sw", PORT, drain_seconds=1,
                  gatekeeper_args=("--prometheus", f"http://{prometheus.address}", "--scale-every", "1",
                                   "--heal-after", "2")).start()
    except BaseException:
        prometheus.stop()
        if turned_on:
            docker("swarm", "leave", "--force")
        raise
    try:
        yield s
    finally:
        try:
            remove_services(s.session)          # while registrator runs, so it deregisters them
            s.wait(lambda: not any(s.stores.instances.of(name) for name in SERVICES), 60,
                   "the services' instances to leave Consul")
        finally:
            try:
                s.stop()
            finally:
                prometheus.stop()
                if turned_on:
                    docker("swarm", "leave", "--force")


def test_swarm_mode_listens_on_loopback_only(stack):
    """Swarm's management (2377) and gossip (7946) ports on 127.0.0.1, and no routing mesh: its
    VXLAN port would listen on every interface, and its virtual port would balance over tasks
    that have not passed their gate."""
    assert exposed_listeners() == []
    assert "ingress" not in docker("network", "ls", "--format", "{{.Name}}").split()


class Watcher:
    """Every instance of a service as Consul has it; remembers any that answered a proxied
    request before its gate opened (the demo counts proxied requests on /stats). An instance
    never seen admitted is asked its count first and Consul second: one whose gate opened between
    the two reads (and took a request at once) is admitted in the second, not a gate bypassed."""

    def __init__(self, stack: Stack, service: str):
        self.stack, self.service = stack, service
        self.served_before_gate = []
        self.seen_admitted = set()

    def _see(self, registered):
        for ri in registered:
            if ri.admitted:
                self.seen_admitted.add(ri.instance.id)

    def instances(self):
        out = self.stack.stores.instances.of(self.service)
        self._see(out)
        stats = {ri.instance.id: get_json(ri.instance.port, "/stats")
                 for ri in out if ri.instance.id not in self.seen_admitted}
        if stats:
            again = self.stack.stores.instances.of(self.service)
            self._see(again)
            present = {ri.instance.id for ri in again}
            for iid, (status, st) in stats.items():
                if iid in present and iid not in self.seen_admitted and status == 200 and st.get("proxied"):
                    self.served_before_gate.append((iid, st))
        return out

    def admitted(self, version=None):
        return [ri for ri in self.instances() if ri.admitted and version in (None, ri.instance.version)]


def host(service: str) -> dict:
    return {"Host": f"{service}.test"}


def served(stack: Stack, w: Watcher, version=None) -> None:
    """Wait until the proxy routes the service to exactly its admitted instances (of `version`):
    Consul's word that they are admitted comes before nginx's workers have them."""
    stack.wait(lambda: stack.proxy_serves(w.admitted(version), service=w.service), 15,
               f"the proxy to serve every admitted {version or 'instance'} of {w.service}")


def load_for(stack: Stack, service: str) -> KeepAliveLoad:
    return KeepAliveLoad("127.0.0.1", stack.listen_port, headers=host(service),
                         connections=10, rate=10).start()


def test_scale_out_and_in_through_the_gate_under_load(stack):
    name = "swscale"
    docker(*gated_service_args(name, stack.session, 1, "demo:v1"))
    w = Watcher(stack, name)
    stack.wait(lambda: stack.served_version(host(name)) == "v1", 120, "the first task to pass its gate and be served")
    load = load_for(stack, name)
    try:
        docker("service", "scale", "--detach", f"{name}=5")
        stack.wait(lambda: len(w.admitted()) == 5, 90, "five admitted instances")
        assert len(tasks(name)) == 5
        docker("service", "scale", "--detach", f"{name}=1")
        stack.wait(lambda: len(w.instances()) == 1 and len(tasks(name)) == 1, 120, "back to one instance")
        served(stack, w)
        then = load.total                 # and two seconds' worth of requests on the one left
        stack.wait(lambda: load.total >= max(then + 200, 600), 30, "traffic on the one instance left")
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert load.total > 500 and set(load.versions) == {"v1"}
    assert w.served_before_gate == []


class RouteSamples(threading.Thread):
    """What the proxy routes for a service, every 0.2 s: ((stable, canary) versions, weight,
    stable servers, canary servers), each change once."""

    def __init__(self, stack: Stack, service: str):
        super().__init__(daemon=True)
        self.stack, self.service, self.samples, self.stopping = stack, service, [], threading.Event()

    def start(self) -> "RouteSamples":
        super().start()
        return self

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            try:
                route = self.stack.proxy_status(f"/services/{self.service}")
            except Exception:                      # the status endpoint busy for a moment
                continue
            stable, canary = route.get("stable") or {}, route.get("canary") or {}
            sample = ((stable.get("version"), canary.get("version")), canary.get("weight") or 0,
                      len(stable.get("servers") or ()), len(canary.get("servers") or ()))
            if not self.samples or self.samples[-1] != sample:
                self.samples.append(sample)

    def finish(self) -> list:
        self.stopping.set()
        self.join(5)
        return self.samples


def test_rolling_update_goes_task_by_task_through_the_gate_and_a_broken_one_rolls_back(stack):
    name = "swupdate"
    docker(*gated_service_args(name, stack.session, 3, "demo:v1"))
    w = Watcher(stack, name)
    stack.wait(lambda: len(w.admitted("v1")) == 3, 90, "three admitted v1 tasks")
    served(stack, w, "v1")
    load = load_for(stack, name)
    routes = RouteSamples(stack, name).start()
    try:
        docker("service", "update", "--detach", "--image", "demo:v2", name)
        stack.wait(lambda: len(w.admitted("v2")) == 3 and len(w.instances()) == 3, 120,
                   "every task replaced by an admitted v2 one")
        stack.wait(lambda: all(t["image"] == "demo:v2" for t in tasks(name)), 30, "Swarm to see only v2 tasks")
        served(stack, w, "v2")
        assert stack.served_version(host(name)) == "v2"
        # meanwhile the traffic moved with the tasks: v2 a canary at its share, v1 serving the rest
        shared = routes.finish()
        assert any(s == ("v1", "v2") and 0 < weight < 100 and n_old and n_new
                   for s, weight, n_old, n_new in shared), shared
        events = [(e.get("event"), e.get("version"), e.get("by")) for e in stack.stores.history.of(name)]
        assert events.index(("canary", "v2", "gatekeeper (swarm update)")) \
            < events.index(("promoted", "v2", "gatekeeper (swarm update)")), events

        # demo:v3 builds but fails its integration tests: the update stops at its first task
        docker("service", "update", "--detach", "--image", "demo:v3", name)
        stack.wait(lambda: any(ri.instance.version == "v3" for ri in w.instances()), 60, "a v3 task to register")
        state = lambda: json.loads(docker("service", "inspect", name, "--format", "{{json .UpdateStatus}}") or "{}")
        stack.wait(lambda: state().get("State", "").startswith("rollback"), 120, "Swarm to roll the update back")
        stack.wait(lambda: all(t["image"] == "demo:v2" for t in tasks(name)) and len(tasks(name)) == 3
                   and len(w.admitted("v2")) == 3 and len(w.instances()) == 3, 120,
                   "three admitted v2 tasks again, no v3 left")
        served(stack, w, "v2")
        time.sleep(2)
    finally:
        load.finish()
        routes.stopping.set()
    assert load.failures == [], load.failures[:5]
    assert set(load.versions) <= {"v1", "v2"} and load.versions["v2"] > 0
    assert w.served_before_gate == []
    history = stack.gatekeeper_cli("history", name)[1]
    assert "update rolled back" in history and "demo:v3" in history and "failed" in history, history
    assert stack.served_version(host(name)) == "v2"


def test_a_killed_task_is_replaced_and_its_replacement_gated(stack):
    name = "swscale"
    w = Watcher(stack, name)
    docker("service", "scale", "--detach", f"{name}=2")
    stack.wait(lambda: len(w.admitted()) == 2, 90, "two admitted instances")
    served(stack, w)
    load = load_for(stack, name)
    try:
        victim = w.admitted()[0].instance
        stack.docker.containers.get(victim.container_id).kill()
        stack.wait(lambda: victim.id not in {ri.instance.id for ri in w.instances()}, 30, "the killed task to leave")
        stack.wait(lambda: len(w.admitted()) == 2, 90, "a replacement task admitted")
        replacement = [ri for ri in w.admitted() if ri.instance.container_id != victim.container_id]
        assert len(replacement) == 2
        verdicts = [stack.stores.verdicts.get(ri.instance.id) for ri in replacement]
        assert all(v and v.container_id == ri.instance.container_id for v, ri in zip(verdicts, replacement))
        time.sleep(1)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert w.served_before_gate == []


def test_scale_by_hand_through_gatekeeper_within_bounds_and_clear_refusals(stack):
    name = "swscale"
    docker("service", "update", "--detach", "--label-add", "gatekeeper.scale=min=1,max=3", name)
    code, out, err = stack.gatekeeper_cli("scale", name, "3", "--json")
    assert code == 0, out + err
    assert json.loads(out)["replicas"] == 3
    w = Watcher(stack, name)
    stack.wait(lambda: len(w.admitted()) == 3, 90, "three admitted instances")
    code, out, err = stack.gatekeeper_cli("scale", name, "7")
    assert code == 1 and "outside swscale's bounds 1..3" in err, (out, err)
    code, out, err = stack.gatekeeper_cli("scale", name, "-1")
    assert code == 2 and "replicas" in err, (out, err)
    code, out, err = stack.gatekeeper_cli("scale", "nosuchservice", "2")
    assert code == 1 and "no Swarm service runs 'nosuchservice'" in err, (out, err)
    assert docker("service", "inspect", name, "--format", "{{.Spec.Mode.Replicated.Replicas}}") == "3"
    code, out, err = stack.gatekeeper_cli("status", name)
    assert code == 0 and "replicas desired 3, running 3, admitted 3" in out and "bounds 1..3" in out, out + err
    assert "set by hand" in stack.gatekeeper_cli("history", name)[1]
    gone = SwarmService("no-such-service-id", "gone", 1, 1, "demo:v1", registers_as="gone")
    with pytest.raises(SwarmError, match="Swarm service gone: the Docker Engine refused scaling it: \\S"):
        Swarm(stack.docker).scale(gone, 2)                  # an update Swarm refuses: its reason, no traceback


def test_the_autoscaler_follows_load_out_and_back_in_with_no_failed_request(stack):
    name = "swauto"
    docker(*gated_service_args(name, stack.session, 1, "demo:v1", "--label",
                               "gatekeeper.scale=min=1,max=4,rps=100,cooldown=6,window=4,step=2"))
    w = Watcher(stack, name)
    stack.wait(lambda: stack.served_version(host(name)) == "v1", 120, "the first task served")
    quiet = KeepAliveLoad("127.0.0.1", stack.listen_port, headers=host(name),
                          connections=5, rate=10).start()             # 50 req/s: one replica is enough
    busy = None
    try:
        time.sleep(8)
        assert docker("service", "inspect", name, "--format", "{{.Spec.Mode.Replicated.Replicas}}") == "1"
        busy = KeepAliveLoad("127.0.0.1", stack.listen_port, headers=host(name),
                             connections=14, rate=25).start()          # +350: 400 req/s needs 4
        stack.wait(lambda: len(w.admitted()) >= 4, 90, "the autoscaler to add replicas up to 4, all admitted")
        busy.finish()
        stack.wait(lambda: len(w.instances()) == 1 and len(tasks(name)) == 1, 90,
                   "back to the minimum once the load is gone and the cooldown is over")
    finally:
        quiet.finish()
        if busy:
            busy.finish()
    assert quiet.failures == [] and busy.failures == [], (quiet.failures[:3], busy.failures[:3])
    assert w.served_before_gate == []
    history = stack.gatekeeper_cli("history", name)[1]
    assert "scaled" in history and "gatekeeper (autoscaler)" in history and "req/s" in history, history
    out = stack.gatekeeper_cli("status", name)[1]
    assert "autoscaled to 100 req/s per instance" in out, out


def test_an_unhealthy_task_is_taken_out_then_replaced_by_a_gated_one(stack):
    name = "swheal"
    docker(*gated_service_args(name, stack.session, 2, "demo:v1", "--container-label", "SERVICE_CHECK_HTTP=/health",
                               "--container-label", "SERVICE_CHECK_INTERVAL=1s"))
    w = Watcher(stack, name)
    stack.wait(lambda: len(w.admitted()) == 2, 90, "two admitted tasks")
    served(stack, w)
    load = load_for(stack, name)
    try:
        sick = w.admitted()[0].instance
        status, _ = get_json(sick.port, "/health/fail", method="POST")
        assert status == 200
        stack.wait(lambda: sick.id not in {ri.instance.id for ri in w.admitted()}, 10, "the sick task out of traffic")
        stack.wait(lambda: sick.id not in {ri.instance.id for ri in w.instances()}, 30, "the sick task replaced")
        stack.wait(lambda: len(w.admitted()) == 2, 120, "its replacement admitted")
        time.sleep(1)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert w.served_before_gate == []
    assert "healing: replaced" in stack.gatekeeper_cli("history", name)[1]


def test_in_manual_mode_a_rolling_update_waits_for_promote(stack):
    name = "swmanual"
    docker(*gated_service_args(name, stack.session, 2, "demo:v1", "--container-label", "gatekeeper.mode=manual"))
    w = Watcher(stack, name)
    stack.wait(lambda: len(w.admitted("v1")) == 2, 90, "two admitted v1 tasks")
    served(stack, w, "v1")
    load = load_for(stack, name)
    try:
        docker("service", "update", "--detach", "--no-resolve-image", "--image", "demo:v2", name)
        stack.wait(lambda: w.admitted("v2"), 120, "the first v2 task admitted")
        stack.wait(lambda: (stack.stores.policies.get(name)[1].canary == "v2"), 30, "v2 the canary at 0 %")
        time.sleep(6)                         # Swarm waits: the v2 task is not healthy until it takes traffic
        assert len(w.admitted("v1")) == 2 and len(w.instances()) == 3
        assert sorted(t["image"] for t in tasks(name)) == ["demo:v1", "demo:v1", "demo:v2"]
        code, out, err = stack.gatekeeper_cli("promote", name, "--full")
        assert code == 0, out + err
        stack.wait(lambda: len(w.admitted("v2")) == 2 and len(w.instances()) == 2, 90,
                   "the update to go on once v2 takes traffic")
        served(stack, w, "v2")
    finally:
        load.finish()
    assert load.failures == [], load.failures[:5]
    assert w.served_before_gate == []
    assert stack.served_version(host(name)) == "v2"


def test_plain_containers_of_a_service_swarm_runs_are_kept_out_with_the_reason_and_fail_nothing(stack):
    """One owner per service: `docker run` of a new version into a service that Swarm runs would
    start a fight (a promotion drains Swarm's tasks, Swarm replaces them, they pass and take the
    service back). The plain containers are kept out of traffic, saying why; Swarm keeps serving."""
    name = "swowner"
    docker(*gated_service_args(name, stack.session, 2, "demo:v1"))
    w = Watcher(stack, name)
    stack.wait(lambda: len(w.admitted("v1")) == 2, 120, "two tasks admitted")
    served(stack, w)
    load = load_for(stack, name)
    plain = []
    try:
        for i in range(3):
            plain.append(stack.deploy(f"owner{i}", "demo:v2", SERVICE_NAME=name, **{"proxy.host": f"{name}.test",
                                                                                  "gatekeeper.version": f"v2-{i}"}))
        kept_out = lambda: [stack.instance(c, service=name) for c in plain]    # noqa: E731
        stack.wait(lambda: all(ri and "other owner" in ri.gate_output for ri in kept_out()), 60,
                   "the plain containers kept out, saying why")
        time.sleep(3)                   # a promotion and its drain (1 s) would have happened by now
        assert not any(ri.admitted for ri in kept_out())
        code, out, _ = stack.gatekeeper_cli("why", name)
        assert code == 0 and f"is run by Swarm service {name}" in out and "docker service update" in out, out
        assert len(tasks(name)) == 2 and len(w.admitted("v1")) == 2
    finally:
        load.finish()
        for c in plain:
            c.remove(force=True)
    assert load.failures == [], load.failures[:5]
    assert load.total > 100 and set(load.versions) == {"v1"}
