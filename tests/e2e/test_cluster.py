"""Several hosts and a Consul cluster (scripts/cluster.sh): three servers, three Docker hosts each
in a network namespace of its own (agent, dockerd, registrator, proxy), gatekeeper on h1 and h2.

Gating crosses hosts through KV (gatekeeper writes the gate, each host's registrator applies it),
and so do container actions (the drain's stop, the healer's restart). The cluster's faults are
caused for real, under traffic through the proxies: the Consul leader killed, a host's agent cut
off for 15 s, a host stopped, the gatekeeper leader's host stopped in the middle of a test run.
"""
import asyncio
import json
import ssl
import subprocess
import threading
import time

import pytest
import requests

from catalog import local_ca
from catalog.consul_client import AsyncConsul, ConsulError
from catalog.model import PASSED, TESTING
from testbed.cluster import (API_PORT, CONSUL_CA, SERVERS, NodeFailure, RouteLog, consul_get, gatekeeper_leader, host_ip, in_host,
                                   keepalive_loads, kill_server, remove_demo_containers, wait_for_leader,
                                   wait_for_stable_leader)
from testbed.processes import ROOT
from testbed.tls import TLSConnection, fingerprint, make_cert, served_fingerprint

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(namespace_cluster):
    return namespace_cluster


@pytest.fixture
def clean(cluster):
    """Each test starts with no demo container on any host and no route left."""
    for h in cluster.hosts:
        remove_demo_containers(cluster, h)
    cluster.wait(lambda: not cluster.instances(), 60, "no demo instance registered")
    yield cluster


def failures(running):
    return {h: load.finish().failures for h, load in running.items()}


def serve_on(cluster, placements, service="demo"):
    """Start demo:v1 on each (host, name); wait until every proxy routes all of them."""
    containers = {name: (h, cluster.run_demo(h, name)) for h, name in placements}
    backends = {cluster.backend(h, c) for h, c in containers.values()}
    cluster.wait_routed(backends, timeout=120)
    return containers, backends


def gatekeeper_cli(cluster, *args):
    r = subprocess.run([str(ROOT / ".venv/bin/gatekeeper"), "--consul", cluster.consul_address(),
                        "--consul-token-file", str(ROOT / ".cluster/tokens/operator.token"), *args],
                       capture_output=True, text=True, timeout=60, env=cluster.client_env)
    return r.returncode, r.stdout, r.stderr


def test_each_host_is_a_node_and_its_agent_answers_on_that_host_only(cluster):
    nodes = {n["Node"] for n in cluster.stores().consul.nodes()}
    assert {"h1", "h2", "h3", "server-11", "server-12", "server-13"} <= nodes
    for h in cluster.hosts:
        with pytest.raises(requests.ConnectionError):
            consul_get(f"https://{host_ip(h)}:{API_PORT}/v1/status/leader")
    with pytest.raises(requests.ConnectionError):                 # from another host neither
        in_host("h1", consul_get, f"https://{host_ip('h2')}:{API_PORT}/v1/status/leader")
    assert in_host("h2", consul_get, f"https://127.0.0.1:{API_PORT}/v1/status/leader").status_code == 200


def test_every_agent_encrypts_gossip_checks_certificates_on_rpc_and_serves_https_only(cluster):
    for where, url in [("server-11", f"https://127.0.0.11:{API_PORT}"), *((h, f"https://127.0.0.1:{API_PORT}") for h in cluster.hosts)]:
        host = where if where.startswith("h") else None
        get = (lambda u, **kw: in_host(host, consul_get, u, **kw)) if host else consul_get
        agent = get(f"{url}/v1/agent/self", headers={"X-Consul-Token": cluster.token("bootstrap")}).json()
        assert agent["Stats"]["serf_lan"]["encrypted"] == "true", where
        debug = agent["DebugConfig"]
        assert debug["VerifyIncomingRPC"] and debug["VerifyOutgoing"] and debug["VerifyServerHostname"], where
        assert debug["HTTPPort"] == -1, f"{where} serves plain HTTP"
        with pytest.raises(requests.exceptions.SSLError):            # not the cluster's CA: refused
            (lambda u: in_host(host, requests.get, u, timeout=2) if host else requests.get(u, timeout=2))(
                f"{url}/v1/status/leader")


def test_each_host_speaks_with_an_agent_token_of_its_own_that_writes_its_own_node_only(cluster):
    def register(token_of, node):
        return requests.put(
            f"{cluster.consul_address()}/v1/catalog/register", verify=str(CONSUL_CA), timeout=5,
            headers={"X-Consul-Token": cluster.token(f"agent-{token_of}")},
            json={"Node": node, "Address": host_ip(node)})
    tokens = {h: cluster.token(f"agent-{h}") for h in cluster.hosts}
    assert len(set(tokens.values())) == len(cluster.hosts), "one token per host"
    assert register("h1", "h1").status_code == 200
    refused = register("h1", "h2")
    assert refused.status_code == 403, "h1's token may not write h2's node"


def test_instances_on_any_host_are_gated_and_served_by_every_proxy_with_their_host(clean):
    cluster = clean
    containers, backends = serve_on(cluster, [("h3", "demo-a"), ("h1", "demo-b")])
    for h in cluster.hosts:
        assert cluster.get(h)[1].get("version") == "v1"
    by_host = {ri.instance.node: ri for ri in cluster.instances()}
    assert set(by_host) == {"h1", "h3"} and all(ri.admitted for ri in by_host.values())
    records = cluster.stores().consul.kv_keys("gatekeeper/gates/h3/")
    assert records == [f"gatekeeper/gates/h3/{by_host['h3'].instance.id}"], "h3's gate is kept under h3's node"
    code, out, err = gatekeeper_cli(cluster, "status", "demo", "--json")
    assert code == 0, err
    rows = {r["id"]: r for r in json.loads(out)["services"][0]["instances"]}
    assert {r["host"] for r in rows.values()} == {"h1", "h3"}
    code, out, _ = gatekeeper_cli(cluster, "status", "demo")
    assert "HOST" in out and " h3 " in out


def test_a_certificate_added_once_is_served_by_every_hosts_proxy_over_https(clean, tmp_path):
    cluster = clean
    serve_on(cluster, [("h2", "demo-tls")])
    ca, _ = local_ca.ensure(tmp_path / "ca")
    chain, key = make_cert(ca, ["demo.cluster.test"])
    (tmp_path / "c.crt").write_text(chain)
    (tmp_path / "c.key").write_text(key)
    added = subprocess.run([str(ROOT / ".venv/bin/proxy-reloader"), "cert", "add", "default", "--cert",
                            str(tmp_path / "c.crt"), "--key", str(tmp_path / "c.key"), "--consul",
                            cluster.consul_address(), "--consul-token-file",
                            str(ROOT / ".cluster/tokens/operator.token")], capture_output=True, text=True, timeout=60,
                           env=cluster.client_env)
    assert added.returncode == 0, added.stderr
    try:
        for h in cluster.hosts:
            cluster.wait(lambda: served_fingerprint(8443, "demo.cluster.test", host_ip(h))
                         == fingerprint(chain), 10, f"{h}'s proxy serving the certificate")
            ctx = ssl.create_default_context(cafile=str(ca.folder / "root.crt"))
            conn = TLSConnection(host_ip(h), 8443, "demo.cluster.test", ctx)
            conn.request("GET", "/demo/1")
            assert json.loads(conn.getresponse().read())["version"] == "v1"
            conn.close()
    finally:
        cluster.stores().certificates.remove("default")


def test_a_forged_gate_on_a_host_without_gatekeeper_is_shut_again(clean):
    cluster = clean
    _, backends = serve_on(cluster, [("h1", "demo-good")])
    cluster.run_demo("h3", "demo-bad", env={"DEMO_BROKEN": "1"})
    cluster.wait(lambda: any(ri.instance.container_name == "demo-bad" and ri.gate_status == "critical"
                             and "failed" in ri.gate_output for ri in cluster.instances()), 90, "the failed verdict applied",
                 logs=("gatekeeper-h1", "gatekeeper-h2", "registrator-h3"))
    [ri] = [ri for ri in cluster.instances() if ri.instance.container_name == "demo-bad"]
    token = cluster.token("registrator")
    forged = in_host("h3", requests.put, f"https://127.0.0.1:{API_PORT}/v1/agent/check/pass/{ri.instance.gate_check_id}",
                     params={"note": "forged"}, headers={"X-Consul-Token": token}, timeout=5, verify=str(CONSUL_CA))
    assert forged.status_code == 200
    forged_at = time.monotonic()
    cluster.wait(lambda: next(r for r in cluster.instances() if r.instance.id == ri.instance.id).gate_status == "critical",
                 30, "the forged gate shut again")
    shut_after = time.monotonic() - forged_at
    time.sleep(3)
    [again] = [r for r in cluster.instances() if r.instance.id == ri.instance.id]
    assert again.gate_status == "critical" and "forged" not in again.gate_output, "and it stays shut"
    assert shut_after < 10, f"shut again after {shut_after:.1f} s"
    for h in cluster.hosts:
        assert cluster.routes(h) == backends, f"{h} routes only the instance that passed"


def test_the_consul_leader_killed_loses_no_request_and_nothing_registered(clean):
    cluster = clean
    _, backends = serve_on(cluster, [("h1", "demo-1"), ("h2", "demo-2"), ("h3", "demo-3")])
    running = keepalive_loads(cluster.hosts, max_seconds=240)
    old = wait_for_stable_leader(cluster)                     # the server that leads, as all of them agree
    killed_at = kill_server(cluster, old)
    try:
        new = wait_for_leader(cluster, 60, not_=old)
        leaderless = time.monotonic() - killed_at
        late = cluster.run_demo("h2", "demo-after")           # registration, gating, routing go on
        backends = backends | {cluster.backend("h2", late)}
        cluster.wait_routed(backends, timeout=90)
    finally:
        cluster.sh("start-server", str(old))
    time.sleep(2)
    failed = failures(running)
    assert all(not f for f in failed.values()), failed
    instances = cluster.instances()
    ids = [ri.instance.id for ri in instances]
    assert len(ids) == len(set(ids)) == 4 and all(ri.admitted for ri in instances), ids
    verdicts = [k for k in cluster.stores().consul.kv_keys("gatekeeper/verdicts/") if any(k.endswith(i) for i in ids)]
    assert len(verdicts) == 4
    print(f"leader {old} killed; {new} leads after {leaderless:.1f} s; "
          f"{sum(load.total for load in running.values())} requests, 0 failed")
    wait_for_leader(cluster)
    cluster.wait(lambda: cluster.server_alive(old) and len(cluster.stores().consul.peers()) == 3, 60,
                 "the killed server back in the quorum")


def test_proxies_read_from_any_server_but_not_from_one_that_lost_the_leader(cluster, monkeypatch):
    """The proxies' reads (CatalogMirror) take an answer from any server within 2 s of the leader.
    A server cut off from the others answers ?stale with what it last knew; the read does not
    believe it, asks for the leader, and fails while there is none (the proxy keeps its routes),
    rather than routing by data nobody can vouch for."""
    monkeypatch.setenv("CONSUL_CACERT", str(CONSUL_CA))
    token = cluster.token("proxy-reloader")

    def read(n: int):
        async def go():
            async with AsyncConsul(f"https://127.0.0.{n}:{API_PORT}", token, wait=1, max_stale=2.0) as c:
                await c.blocking_get("/v1/catalog/services", {}, 0)
                return c.stale_answers, c.leader_answers
        return asyncio.run(go())

    leader = wait_for_stable_leader(cluster)
    follower = next(n for n in SERVERS if n != leader)
    assert read(follower) == (1, 0), "a follower in touch with the leader answers itself"
    others = [n for n in SERVERS if n != follower]
    for n in others:
        kill_server(cluster, n)
    try:
        seen = {}

        def lost_its_leader():
            r = consul_get(f"https://127.0.0.{follower}:{API_PORT}/v1/catalog/services?stale",
                           headers={"X-Consul-Token": token})
            seen["answer"] = r
            return r.status_code == 200 and (r.headers.get("X-Consul-KnownLeader") == "false"
                                             or int(r.headers.get("X-Consul-LastContact", 0)) > 2000)
        cluster.wait(lost_its_leader, 30, "the lone server to lose its leader")
        assert "proxy-reloader" in seen["answer"].json(), "it still answers ?stale, with what it last knew"
        with pytest.raises((ConsulError, asyncio.TimeoutError)):     # "No cluster leader", or held until then
            read(follower)
    finally:
        for n in others:
            cluster.sh("start-server", str(n))
    cluster.wait(lambda: len(cluster.stores().consul.peers()) == 3, 60, "the stopped servers back in the quorum")
    leader = wait_for_stable_leader(cluster)
    assert [read(n) for n in SERVERS if n != leader] == [(1, 0), (1, 0)], "both followers answer again"


def test_an_agent_cut_off_for_15_s_keeps_every_proxy_serving_without_flapping(clean):
    cluster = clean
    _, backends = serve_on(cluster, [("h1", "demo-1"), ("h2", "demo-2"), ("h3", "demo-3")])
    logs = {h: RouteLog(h, "demo") for h in cluster.hosts}
    for log in logs.values():
        log.start()
    running = keepalive_loads(cluster.hosts, max_seconds=240)
    time.sleep(2)
    cut_at = time.monotonic()
    cluster.sh("cut", "h2")
    try:
        time.sleep(15)
    finally:
        cluster.sh("heal", "h2")
    healed_at = time.monotonic()
    cluster.wait_routed(backends, timeout=60)
    converged = time.monotonic() - healed_at
    time.sleep(2)
    failed = failures(running)
    for log in logs.values():
        log.stop()
    assert all(not f for f in failed.values()), failed
    while_cut = [servers for t, servers in logs["h2"].since(cut_at) if t < healed_at]
    assert while_cut == [], f"h2's proxy keeps its last good routes while cut off, not {while_cut}"
    for h, log in logs.items():
        # The servers mark h2 failed, so h2's instance leaves the routes (h2's own proxy learns it
        # once it hears the servers again) and comes back: one change each way, no back and forth.
        after = [sorted(servers or ()) for _, servers in log.since(cut_at)]
        assert len(after) <= 2, f"{h} flapped: {after}"
        assert log.current == backends
    print(f"cut 15 s; converged {converged:.1f} s after healing; "
          f"{sum(load.total for load in running.values())} requests, 0 failed")


def test_a_stopped_host_leaves_every_proxy_within_failure_detection_plus_1_s(clean):
    cluster = clean
    containers, backends = serve_on(cluster, [("h1", "demo-1"), ("h2", "demo-2"), ("h3", "demo-3")])
    gone = {cluster.backend("h3", containers["demo-3"][1])}
    logs = {h: RouteLog(h, "demo") for h in ("h1", "h2")}
    for log in logs.values():
        log.start()
    running = keepalive_loads(("h1", "h2"), max_seconds=240)
    time.sleep(2)
    stopped_at = time.monotonic()
    failure = NodeFailure(cluster, "h3", limit=60)
    failure.start()
    cluster.sh("stop-host", "h3")
    try:
        failure.join(60)
        cluster.wait(lambda: all(log.first_without(gone, stopped_at) for log in logs.values()), 60,
                     "h3's instance out of every other proxy")
        time.sleep(2)
        failed = failures(running)
        for log in logs.values():
            log.stop()
        assert failure.at is not None, "the servers never marked h3 failed"
        out = max(log.first_without(gone, stopped_at) for log in logs.values())
        detection, after = failure.at - stopped_at, out - failure.at
        print(f"h3 failed after {detection:.1f} s; out of every proxy {after:.2f} s later")
        assert after <= 1.0, f"out of every proxy {after:.2f} s after Consul marked h3 failed"
        assert all(not f for f in failed.values()), failed
    finally:
        cluster.sh("start-host", "h3")
    # Nothing stale once it is back: its dead container's registration is gone everywhere.
    cluster.wait(lambda: cluster.node_health("h3") == "passing", 60, "h3 alive again")
    cluster.wait(lambda: {ri.instance.node for ri in cluster.instances()} == {"h1", "h2"}, 60,
                 "h3's old instance deregistered", logs=("registrator-h3",))
    cluster.wait_routed(backends - gone, timeout=60)


def revoke(cluster, part):
    """Delete a token from Consul, as an operator revokes one (its file still holds the old secret)."""
    accessor = cluster.stores(part).consul.token_self()["accessor"]
    r = requests.delete(f"{cluster.consul_address()}/v1/acl/token/{accessor}", verify=str(CONSUL_CA), timeout=5,
                        headers={"X-Consul-Token": cluster.token("bootstrap")})
    assert r.status_code == 200, r.text


def test_a_hosts_tokens_revoked_its_registrator_reports_the_refusal_and_loses_nothing_once_restored(clean):
    cluster = clean
    containers, _ = serve_on(cluster, [("h3", "demo-old"), ("h1", "demo-other")])
    other = cluster.backend("h1", containers["demo-other"][1])
    revoked = {part: cluster.token(part) for part in ("registrator-h3", "agent-h3")}
    for part in revoked:
        revoke(cluster, part)
    new = cluster.run_demo("h3", "demo-new")              # while h3 can write nothing to Consul ...
    containers["demo-old"][1].stop(timeout=2)              # ... a container comes and one goes
    cluster.wait(lambda: "Consul refuses registrator's token" in cluster.logs("registrator-h3", 400), 30,
                 "h3's registrator to report the refusal", logs=("registrator-h3",))
    refusal = next(line for line in cluster.logs("registrator-h3", 400).splitlines()
                   if "Consul refuses registrator's token" in line)
    assert "ACL not found" in refusal and "registrator-h3.token" in refusal, refusal
    assert not any(ri.instance.container_name == "demo-new" for ri in cluster.instances()), "refused, so not there"
    for h in ("h1", "h2"):                                 # the other hosts go on as before
        assert other in (cluster.routes(h) or set())

    cluster.sh("tokens")                                   # the operator makes h3's tokens anew
    assert all(cluster.token(part) != old for part, old in revoked.items()), "new secrets in the files"
    cluster.wait_routed({cluster.backend("h3", new), other}, timeout=60)
    assert {ri.instance.container_name for ri in cluster.instances()} == {"demo-new", "demo-other"}, \
        "the container started meanwhile registered, the one stopped meanwhile removed"
    cluster.wait(lambda: "Consul accepts registrator's token again" in cluster.logs("registrator-h3", 400), 15,
                 "h3's registrator to say its token holds again")


def test_the_drain_and_the_healer_act_on_the_host_the_container_runs_on(clean):
    """Gatekeeper runs on h1 or h2; the containers here run on h3. Stopping the old version after
    a promotion and restarting an unhealthy container are asked in KV under h3's node and carried
    out by h3's registrator on h3's engine."""
    cluster = clean
    engine = cluster.docker("h3")
    old = cluster.run_demo("h3", "demo-old")
    cluster.wait_routed({cluster.backend("h3", old)}, timeout=120)
    health = {"SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "1s", "SERVICE_CHECK_TIMEOUT": "1s"}
    new = cluster.run_demo("h3", "demo-new", image="demo:v2", env=health, restart="unless-stopped")
    new_backend = cluster.backend("h3", new)
    cluster.wait_routed({new_backend}, timeout=120)
    cluster.wait(lambda: engine.containers.get(old.id).status == "exited", 30,
                 "h3's v1 stopped after the drain", logs=("registrator-h3",))
    asked = cluster.stores().consul.kv_keys("gatekeeper/actions/")
    assert [k for k in asked if "demo-old" in k] == ["gatekeeper/actions/h3/h3:demo-old:8080"], asked
    # said once the engine's stop returned, which may come a moment after the container exited
    cluster.wait(lambda: "demo-old:8080: stop asked" in cluster.logs("registrator-h3", 400), 15,
                 "h3's registrator to say it stopped demo-old", logs=("registrator-h3",))

    def run_of(c):
        return engine.api.inspect_container(c.id)["State"]["StartedAt"]
    first_run = run_of(new)
    failed = requests.post(f"http://{new_backend}/health/fail", timeout=5)
    assert failed.status_code == 200
    cluster.wait(lambda: run_of(new) != first_run, 60, "h3's registrator to restart the unhealthy container",
                 logs=("registrator-h3",))
    cluster.wait(lambda: any(ri.instance.container_name == "demo-new" and ri.admitted
                             and ri.instance.started == run_of(new) for ri in cluster.instances()),
                 120, "its new run tested again and admitted")
    cluster.wait_routed({cluster.backend("h3", new)}, timeout=60)     # a restart publishes a new port
    assert "demo-new:8080: restart asked" in cluster.logs("registrator-h3", 400)
    assert engine.containers.get(old.id).status == "exited", "the old version stays stopped"


def test_the_gatekeeper_leaders_host_stopped_mid_test_another_tests_once_to_a_verdict(clean):
    cluster = clean
    leader = gatekeeper_leader(cluster)
    assert leader in ("h1", "h2"), f"gatekeeper leader: {leader!r}"
    other = "h2" if leader == "h1" else "h1"
    # The service answers 15 s after its container starts; its tests wait for it (up to 30 s), so
    # the test run lasts long enough to stop the leader's host in the middle of it.
    slow = cluster.run_demo("h3", "demo-slow", command=["sh", "-c", "sleep 15; exec python3 -m demo --port 8080"])
    seen = []
    stop = threading.Event()

    def record():
        stores = cluster.stores()
        while not stop.is_set():
            try:
                for ri in cluster.instances():
                    v = stores.verdicts.get(ri.instance.id)
                    if v and (not seen or seen[-1] != (v.state, v.started, v.finished)):
                        seen.append((v.state, v.started, v.finished))
            except Exception:
                pass
            time.sleep(0.1)
    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    try:
        cluster.wait(lambda: seen and seen[-1][0] == TESTING, 60, "the leader testing the new instance",
                     logs=(f"gatekeeper-{leader}",))
        time.sleep(2)
        assert seen[-1][0] == TESTING, "still testing when its host goes"
        cluster.sh("stop-host", leader)
        cluster.wait(lambda: gatekeeper_leader(cluster) == other, 60, f"gatekeeper on {other} to lead",
                     logs=(f"gatekeeper-{other}",))
        cluster.wait(lambda: seen and seen[-1][0] == PASSED, 120, "a verdict", logs=(f"gatekeeper-{other}",))
        time.sleep(3)
    finally:
        stop.set()
        recorder.join(5)
    finals = [s for s in seen if s[0] != TESTING]
    assert len(finals) == 1 and finals[0][0] == PASSED, seen
    [ri] = [ri for ri in cluster.instances() if ri.instance.container_name == "demo-slow"]
    # this instance's runs only: the other gatekeeper may have led earlier in this module
    runs = cluster.logs(f"gatekeeper-{other}", 2000).count(f"{ri.instance.id}: testing demo v1")
    assert runs == 1, f"{other} tested it {runs} times"
    assert ri.admitted
    slow.remove(force=True)
    cluster.sh("start-host", leader)
    cluster.wait(lambda: cluster.node_health(leader) == "passing", 60, f"{leader} back")
