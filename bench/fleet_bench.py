"""Past what one machine can run as real hosts: 20 Consul client agents standing for 20 hosts
(no engines), 5,000 instances registered through them as each host's registrator would, churned
at a steady rate while 20 proxies' catalog mirrors (one per agent, what proxy-reloader runs)
follow. How long a change takes to reach every proxy, what the three servers spend (CPU,
memory), and the blocking-query load they carry.

    .venv/bin/python -m bench.fleet_bench [--agents 20] [--services 100] [--per-service 50]
                                          [--rate 2] [--seconds 60] [--json] [--check]

Everything runs on this machine's two cores: the three servers, the 20 agents and the 20 mirrors
(each a process of its own); the mirrors' JSON decoding competes with the servers for the same CPU.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import command_line, exit_code, goals_table, percentile, progress, report, with_check
from testbed.consul_fleet import Fleet, churn


def tail_of(values) -> str:
    """What a p99 of these many values is: of fewer than 100, the slowest one."""
    return f"the slowest of {len(values)}" if len(values) < 100 else f"of {len(values)}"


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--per-service", type=int, default=50)
    p.add_argument("--rate", type=float, default=2.0, help="instance replacements per second (default %(default)s)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the churn lasts (default %(default)s)")
    args = p.parse_args(argv)
    say = progress(args.json)
    total = args.services * args.per_service
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        fleet = Fleet(Path(tmp), args.agents)
        try:
            say(f"starting 3 servers and {args.agents} client agents")
            fleet.start()
            t0 = time.monotonic()
            live = fleet.populate(args.services, args.per_service)
            say(f"{total} instances registered and admitted through {args.agents} agents in {time.monotonic() - t0:.1f} s")
            t0 = time.monotonic()
            fleet.follow()
            say(f"{args.agents} mirrors read the catalog ({args.services} services) in {time.monotonic() - t0:.1f} s")
            time.sleep(3)
            idle_cpu0, idle_t0 = fleet.cpu_seconds(), time.monotonic()
            time.sleep(10)
            idle_cpu = (fleet.cpu_seconds() - idle_cpu0) / (time.monotonic() - idle_t0) * 100
            cpu0, q0, c0 = fleet.cpu_seconds(), fleet.answers(), time.monotonic()
            say(f"churning {args.rate:g} replacements/s for {args.seconds:g} s")
            changes = churn(fleet, live, args.rate, args.seconds)
            time.sleep(10)                      # let the last changes arrive
            elapsed = time.monotonic() - c0
            cpu = (fleet.cpu_seconds() - cpu0) / elapsed * 100
            queries = (fleet.answers() - q0) / elapsed
            achieved = len(changes) / args.seconds
            rss = fleet.rss_mb()
            reach, leave, missing = [], [], 0
            for new_id, at, old_id, gone_at in changes:
                arrivals = [seen.get(new_id) for seen in fleet.seen]
                departures = [gone.get(old_id) for gone in fleet.gone_seen]
                if None in arrivals or None in departures:
                    missing += 1
                    continue
                reach.append(max(arrivals) - at)
                leave.append(max(departures) - gone_at)
            # per proxy: one per service in the catalog, one on the service list, one on the policies
            open_queries = fleet.n * (len(fleet.stores(0).consul.catalog_services()) + 2)
        finally:
            fleet.stop()
    p50, p99 = statistics.median(reach), percentile(reach, 99)
    rows = [
        (f"changes that reached all {args.agents} proxies ({len(changes)} replacements)", len(changes) - missing,
         f"= {len(changes)}", missing == 0),
        ("new instance registered -> admitted in every proxy's mirror, p50 s", round(p50, 3), "<= 1", p50 <= 1),
        (f"new instance registered -> admitted in every proxy's mirror, p99 s ({tail_of(reach)})", round(p99, 3),
         "<= 3", p99 <= 3),
        ("instance deregistered -> gone from every proxy's mirror, p50 s", round(statistics.median(leave), 3), "<= 1",
         statistics.median(leave) <= 1),
        ("Consul servers' CPU while churning, % of one core (3 servers)", round(cpu, 1), "-", None),
        ("Consul servers' CPU idle with every proxy following, % of one core", round(idle_cpu, 1), "-", None),
        ("Consul servers' memory, MB each (RSS)", " / ".join(f"{r:.0f}" for r in rss), "-", None),
        (f"blocking queries open ({args.agents} proxies x (services in the catalog + 2))", open_queries, "-", None),
        ("blocking-query answers to the proxies while churning, per second", round(queries), "-", None),
        (f"replacements made, per second (asked: {args.rate:g})", round(achieved, 1), "-", None),
    ]
    result = {"agents": args.agents, "instances": total, "rate": args.rate, "changes": len(changes), "missing": missing,
              "reach_p50_s": round(p50, 3), "reach_p99_s": round(p99, 3), "leave_p50_s": round(statistics.median(leave), 3),
              "server_cpu_pct": round(cpu, 1), "server_idle_cpu_pct": round(idle_cpu, 1),
              "server_rss_mb": [round(r) for r in rss], "open_blocking_queries": open_queries,
              "answers_per_s": round(queries), "achieved_rate": round(achieved, 2),
              "goals": [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]}
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
