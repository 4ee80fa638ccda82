"""Several hosts and a Consul cluster: the Consul leader killed, a host killed, registrations
with three hosts starting containers at once, and the deploy lead time across hosts against one
host, measured in one run on the cluster of scripts/cluster.sh (three servers, three Docker
hosts in network namespaces, gatekeeper on h1 and h2).

    .venv/bin/python -m bench.cluster_bench [--runs 3] [--json] [--check]

Failed requests count answers other than 200 on kept-alive connections through every proxy that
stays up (a request on a connection to a host that died waits the proxies' --read-timeout, 3 s,
and is tried on another instance: idempotent GETs only). "Failure detection" is the time from
the host's death until the Consul servers mark its node failed (serfHealth critical).
"""
from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.harness import command_line, exit_code, goals_table, progress, report, with_check
from testbed.cluster import (Cluster, NodeFailure, RouteLog, gatekeeper_leader, host_ip, keepalive_loads,
                                   kill_server, remove_demo_containers, wait_for_stable_leader)
from testbed.processes import wait_until

BURST = 10                 # containers per host started at once for the registration rate


def serve_everywhere(cluster: Cluster) -> set:
    backends = set()
    for h in cluster.hosts:
        backends.add(cluster.backend(h, cluster.run_demo(h, f"bench-{h}")))
    cluster.wait_routed(backends, timeout=120)
    return backends


def leader_kill(cluster: Cluster) -> float:
    """Seconds from the leader's SIGKILL to a new leader every live server names. Each kill starts
    from a settled cluster: a server that rejoins after a kill can call an election and move the
    leadership, and a kill of a server that no longer leads would measure nothing."""
    old = wait_for_stable_leader(cluster)
    t0 = kill_server(cluster, old)
    wait_until(lambda: (lambda n: n if n not in (None, old) else None)(cluster.agreed_leader()), 60,
               f"a Consul leader other than server {old}")
    leaderless = time.monotonic() - t0
    cluster.sh("start-server", str(old))
    wait_until(lambda: len(cluster.stores().consul.peers()) == 3, 60, "three servers in the quorum again")
    return leaderless


def host_kill(cluster: Cluster, backends: set, victim: str = "h3") -> tuple:
    """(failure detection s, out of every other proxy after detection s)."""
    gone = {b for b in backends if b.startswith(host_ip(victim) + ":")}
    others = [h for h in cluster.hosts if h != victim]
    logs = {h: RouteLog(h, "demo") for h in others}
    for log in logs.values():
        log.start()
    failure = NodeFailure(cluster, victim)
    failure.start()
    t0 = time.monotonic()
    cluster.sh("stop-host", victim)
    try:
        failure.join(90)
        wait_until(lambda: all(log.first_without(gone, t0) for log in logs.values()), 60, "out of every proxy")
        out = max(log.first_without(gone, t0) for log in logs.values())
    finally:
        for log in logs.values():
            log.stop()
        cluster.sh("start-host", victim)
    remove_demo_containers(cluster, victim)
    backends -= gone
    backends.add(cluster.backend(victim, cluster.run_demo(victim, f"bench-{victim}-{int(t0)}")))
    cluster.wait_routed(backends, timeout=120)
    return failure.at - t0, out - failure.at


def registrations(cluster: Cluster, round_: int) -> tuple:
    """BURST containers on every host at once -> (registrations per second, containers the engines
    started per second, p50 start -> catalog s, how many)."""
    names = {h: [f"reg{round_}-{h}-{i}" for i in range(BURST)] for h in cluster.hosts}
    started = {}

    def start(h, name):
        # A registration, not a deploy: a published port is all registrator needs, and the
        # container must not pass a gate and change routing.
        cluster.docker(h).containers.run("demo:v1", name=name, command=["sleep", "300"], detach=True,
                                         publish_all_ports=True, labels={"SERVICE_NAME": "regbench", "proxystack.demo": "1"})
        started[name] = time.monotonic()
    t0 = time.monotonic()
    seen = {}
    with ThreadPoolExecutor(max_workers=len(cluster.hosts) * 3) as pool:
        for h in cluster.hosts:
            for name in names[h]:
                pool.submit(start, h, name)
        total = len(cluster.hosts) * BURST
        stores = cluster.stores()
        deadline = time.monotonic() + 120
        while len(seen) < total and time.monotonic() < deadline:
            for ri in stores.instances.of("regbench"):
                seen.setdefault(ri.instance.container_name, time.monotonic())
            time.sleep(0.05)
    elapsed = max(seen.values()) - t0
    starts = len(started) / (max(started.values()) - t0)
    latency = statistics.median(seen[n] - started[n] for n in seen if n in started)
    for h in cluster.hosts:
        for c in cluster.docker(h).containers.list(all=True, filters={"name": f"reg{round_}-"}):
            c.remove(force=True)
    wait_until(lambda: not cluster.stores().instances.of("regbench"), 60, "the burst deregistered")
    return len(seen) / elapsed, starts, latency, len(seen)


def lead_time(cluster: Cluster, host: str, proxies, version: str) -> float:
    """docker run of a new version on `host` -> every proxy in `proxies` answers with it."""
    t0 = time.monotonic()
    cluster.run_demo(host, f"lead-{version}", env={"DEMO_VERSION": version}, **{"gatekeeper.version": version})
    def served():
        return all(cluster.get(p, timeout=2)[1].get("version") == version for p in proxies)
    wait_until(served, 120, f"{version} served", interval=0.05)
    return time.monotonic() - t0


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--runs", type=int, default=3, help="rounds of each measure (default %(default)s)")
    args = p.parse_args(argv)
    say = progress(args.json)
    cluster = Cluster(3)
    leaderless, detection, out_after, rates, start_rates, reg_latency, across, one = [], [], [], [], [], [], [], []
    say("starting the cluster (scripts/cluster.sh up 3)")
    cluster.up()
    try:
        for h in cluster.hosts:
            remove_demo_containers(cluster, h)
        backends = serve_everywhere(cluster)
        running = keepalive_loads(cluster.hosts)
        time.sleep(2)
        for i in range(args.runs):
            leaderless.append(leader_kill(cluster))
            say(f"run {i + 1}: Consul leader killed; a new one after {leaderless[-1]:.2f} s")
        kill_failed = sum(len(x.finish().failures) for x in running.values())
        kill_total = sum(x.total for x in running.values())
        kill_failed_host = kill_total_host = 0
        for i in range(args.runs):
            running = keepalive_loads(("h1", "h2"))
            time.sleep(2)
            d, o = host_kill(cluster, backends)
            detection.append(d)
            out_after.append(o)
            failed_now = sum(len(x.finish().failures) for x in running.values())
            kill_failed_host += failed_now
            kill_total_host += sum(x.total for x in running.values())
            say(f"run {i + 1}: h3 stopped; failed after {d:.2f} s, out of every proxy {o:.2f} s later; "
                f"{failed_now} failed requests")
        for i in range(args.runs):
            rate, start_rate, lat, n = registrations(cluster, i)
            rates.append(rate)
            start_rates.append(start_rate)
            reg_latency.append(lat)
            say(f"run {i + 1}: {n} containers on 3 hosts at once: engines started {start_rate:.1f}/s, "
                f"{rate:.1f} registrations/s, p50 {lat:.2f} s start -> catalog")
        leader = gatekeeper_leader(cluster)
        remote = next(h for h in cluster.hosts if h not in ("h1", "h2"))
        for i in range(args.runs):
            one.append(lead_time(cluster, leader, [leader], f"one{i}"))
            across.append(lead_time(cluster, remote, cluster.hosts, f"across{i}"))
            say(f"run {i + 1}: lead time on one host {one[-1]:.2f} s, across hosts (all proxies) {across[-1]:.2f} s")
    finally:
        say("tearing the cluster down")
        cluster.down()
    med = statistics.median
    rows = [
        (f"Consul leader killed: failed requests through 3 proxies ({kill_total} requests, {args.runs} kills)",
         kill_failed, "0", kill_failed == 0),
        ("Consul leader killed: time without a leader, median (worst) s",
         f"{med(leaderless):.2f} ({max(leaderless):.2f})", "median <= 5", med(leaderless) <= 5),
        ("host killed: Consul's failure detection, median s", round(med(detection), 2), "-", None),
        ("host killed: its instances out of every proxy after detection, worst s",
         round(max(out_after), 2), "<= 1", max(out_after) <= 1),
        (f"host killed: failed idempotent requests through the other proxies ({kill_total_host} requests)",
         kill_failed_host, "0", kill_failed_host == 0),
        (f"containers the 3 engines started per second, {BURST} each at once, median", round(med(start_rates), 1),
         "-", None),
        ("registrations/s in the same bursts, median (registrator keeps pace: >= 0.9 x starts/s)",
         round(med(rates), 1), f">= {0.9 * med(start_rates):.1f}", med(rates) >= 0.9 * med(start_rates)),
        ("registration: container started -> in the catalog, p50 s (median of runs)", round(med(reg_latency), 2),
         "<= 1", med(reg_latency) <= 1),
        ("deploy lead time on one host (its proxy), median s", round(med(one), 2), "-", None),
        ("deploy lead time across hosts (all 3 proxies), median s", round(med(across), 2),
         "<= one host + 1", med(across) <= med(one) + 1),
    ]
    result = {"leaderless_s": [round(x, 2) for x in leaderless], "detection_s": [round(x, 2) for x in detection],
              "out_after_detection_s": [round(x, 2) for x in out_after], "registrations_per_s": [round(x, 1) for x in rates], "starts_per_s": [round(x, 1) for x in start_rates],
              "registration_p50_s": [round(x, 2) for x in reg_latency], "lead_time_one_host_s": [round(x, 2) for x in one],
              "lead_time_across_hosts_s": [round(x, 2) for x in across],
              "goals": [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]}
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
