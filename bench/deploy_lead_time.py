"""Deploy lead time and failed requests during the switch, on the real stack.

Each run deploys the other version with `docker run` (v1 is stable -> deploy v2, then v2 ->
v1, ...) and measures the time from `docker run` to the first response through nginx that
comes from the new version, while a client sends requests through the proxy (a new
connection per request) and counts failures. Prints every run, then the medians beside their
goals; --check exits 1 when one is missed.

    .venv/bin/python -m bench.deploy_lead_time [--runs 5] [--json] [--check]
"""
from __future__ import annotations

import statistics
import sys
import time

from bench.harness import bench_env, command_line, exit_code, goals_table, report, with_check
from testbed.load import LoadClient
from testbed.processes import wait_until
from testbed.stack import Stack

LISTEN_PORT = 18100


def one_run(stack: Stack, name: str, image: str, version: str, drain_wait: float) -> dict:
    load = LoadClient("127.0.0.1", LISTEN_PORT, max_seconds=180, pause=0.002)
    load.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    stack.deploy(name, image)
    wait_until(lambda: stack.served_version() == version, 120, f"the proxy to serve {version}", interval=0.02)
    lead = time.monotonic() - t0
    time.sleep(drain_wait)               # the old version drains and is stopped meanwhile
    load.finish()
    return {"lead_time_s": round(lead, 3), "requests": load.total, "failed": len(load.failures),
            "failures": load.failures[:3]}


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    results = []
    with bench_env() as env:
        stack = Stack(env.consul, env.base, env.client, env.session, LISTEN_PORT, drain_seconds=2).start()
        try:
            stack.deploy("v1-0", "demo:v1")
            wait_until(lambda: stack.served_version() == "v1", 120, "v1 to be served")
            for i in range(1, args.runs + 1):
                version = "v2" if i % 2 else "v1"
                r = one_run(stack, f"{version}-{i}", f"demo:{version}", version, drain_wait=4.0)
                results.append(r)
                if not args.json:
                    print(f"run {i}: deploy {version}: lead time {r['lead_time_s']:.2f} s, "
                          f"{r['failed']} failed of {r['requests']} requests", flush=True)
        finally:
            stack.stop()
    summary = {"runs": results,
               "median_lead_time_s": round(statistics.median(r["lead_time_s"] for r in results), 3),
               "median_failed": statistics.median(r["failed"] for r in results),
               "total_failed": sum(r["failed"] for r in results),
               "total_requests": sum(r["requests"] for r in results)}
    rows = [(f"deploy lead time, docker run -> first proxied answer from it: median s ({len(results)} runs)",
             summary["median_lead_time_s"], "<= 5", summary["median_lead_time_s"] <= 5),
            (f"failed requests during the switches (of {summary['total_requests']})", summary["total_failed"], "0",
             summary["total_failed"] == 0)]
    summary["goals"] = [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]
    report(summary, args.json, goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
