"""Past what one machine can run as real hosts: 20 Consul client agents standing for 20 hosts
(no engines), 5,000 instances registered through them as each host's registrator would, churned
at a steady rate while 20 proxies' catalog mirrors (one per agent, what proxy-reloader runs)
follow. How long a change takes to reach every proxy, what the three servers spend (CPU,
memory), and the blocking-query load they carry.

    .venv/bin/python -m bench.fleet_bench [--runs 1] [--agents 20] [--services 100] [--per-service 50]
                                          [--rate 2] [--seconds 60] [--wait 300] [--max-stale 2 | --leader]
                                          [--json] [--check]

Each run starts a fleet of its own; with several runs every goal must hold in each, and the
table shows each run's figure (the spread). The proxies read as proxy-reloader does: blocking
queries that wait up to --wait seconds, answered by any server within --max-stale of the leader
(--leader: every read from the leader, as before stale reads).

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
from catalog.mirror import MAX_STALE, WAIT
from testbed.consul_fleet import Fleet, churn


def one_run(args, say) -> dict:
    """Start a fleet, fill it, let every proxy follow, churn, and measure; the fleet is gone after."""
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
            fleet.follow(args.wait, None if args.leader else args.max_stale)
            say(f"{args.agents} mirrors read the catalog ({args.services} services) in {time.monotonic() - t0:.1f} s")
            time.sleep(3)
            idle_cpu0, idle_t0 = fleet.cpu_seconds(), time.monotonic()
            time.sleep(10)
            idle_cpu = (fleet.cpu_seconds() - idle_cpu0) / (time.monotonic() - idle_t0) * 100
            each0, q0, c0 = fleet.cpu_seconds_each(), fleet.answers(), time.monotonic()
            say(f"churning {args.rate:g} replacements/s for {args.seconds:g} s")
            changes = churn(fleet, live, args.rate, args.seconds)
            time.sleep(10)                      # let the last changes arrive
            elapsed = time.monotonic() - c0
            each = [(b - a) / elapsed * 100 for a, b in zip(each0, fleet.cpu_seconds_each())]
            queries = (fleet.answers() - q0) / elapsed
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
    return {"changes": len(changes), "missing": missing, "reach": reach, "leave": leave,
            "reach_p50_s": round(statistics.median(reach), 3), "reach_p99_s": round(percentile(reach, 99), 3),
            "leave_p50_s": round(statistics.median(leave), 3), "server_cpu_pct": round(sum(each), 1),
            "server_cpu_each_pct": [round(c, 1) for c in each], "server_idle_cpu_pct": round(idle_cpu, 1),
            "server_rss_mb": [round(r) for r in rss], "open_blocking_queries": open_queries,
            "answers_per_s": round(queries), "achieved_rate": round(len(changes) / args.seconds, 2)}


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--runs", type=int, default=1, help="fleets started one after the other (default %(default)s)")
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--per-service", type=int, default=50)
    p.add_argument("--rate", type=float, default=2.0, help="instance replacements per second (default %(default)s)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the churn lasts (default %(default)s)")
    p.add_argument("--wait", type=float, default=WAIT, help="the proxies' blocking-query wait, s (default %(default)s)")
    p.add_argument("--max-stale", type=float, default=MAX_STALE,
                   help="any server may answer within this many seconds of the leader (default %(default)s)")
    p.add_argument("--leader", action="store_true", help="every read from the leader (no stale reads)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs: at least 1")
    say = progress(args.json)
    runs = []
    for n in range(args.runs):
        if args.runs > 1:
            say(f"run {n + 1} of {args.runs}")
        runs.append(one_run(args, say))

    def each(key):
        return " / ".join(str(r[key]) for r in runs)

    several = args.runs > 1
    per = "in each run" if several else ""
    slowest = max(len(r["reach"]) for r in runs)
    tail = f"the slowest of {slowest}" if slowest < 100 else "of each run's"
    rows = [
        (f"changes that reached all {args.agents} proxies {per}".strip(),
         " / ".join(f"{r['changes'] - r['missing']} of {r['changes']}" for r in runs), "all",
         all(r["missing"] == 0 for r in runs)),
        ("new instance registered -> admitted in every proxy's mirror, p50 s", each("reach_p50_s"),
         f"<= 1 {per}".strip(), all(r["reach_p50_s"] <= 1 for r in runs)),
        (f"new instance registered -> admitted in every proxy's mirror, p99 s ({tail})", each("reach_p99_s"),
         f"<= 3 {per}".strip(), all(r["reach_p99_s"] <= 3 for r in runs)),
        ("instance deregistered -> gone from every proxy's mirror, p50 s", each("leave_p50_s"),
         f"<= 1 {per}".strip(), all(r["leave_p50_s"] <= 1 for r in runs)),
        ("Consul servers' CPU while churning, % of one core (3 servers together)", each("server_cpu_pct"), "-", None),
        ("  each server's share (the leader's included), % of one core",
         " / ".join("+".join(f"{c:g}" for c in r["server_cpu_each_pct"]) for r in runs), "-", None),
        ("Consul servers' CPU idle with every proxy following, % of one core", each("server_idle_cpu_pct"), "-", None),
        ("Consul servers' memory, MB each (RSS)",
         " / ".join("+".join(str(m) for m in r["server_rss_mb"]) for r in runs), "-", None),
        (f"blocking queries open ({args.agents} proxies x (services in the catalog + 2))",
         each("open_blocking_queries"), "-", None),
        ("blocking-query answers to the proxies while churning, per second", each("answers_per_s"), "-", None),
        (f"replacements made, per second (asked: {args.rate:g})", each("achieved_rate"), "-", None),
    ]
    result = {"agents": args.agents, "instances": args.services * args.per_service, "rate": args.rate,
              "wait_s": args.wait, "max_stale_s": None if args.leader else args.max_stale,
              "runs": [{k: v for k, v in r.items() if k not in ("reach", "leave")} for r in runs],
              "goals": [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]}
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
