"""Progressive mode on the real stack (Prometheus scraping every second, under load from many
clients):

1. breach -> weight 0: a canary failing every proxied request, threshold 1: from its analysis
   start (the canary is bad from its first request) to nginx's workers routing it no more; goal
   at most one interval + 1 s;
2. decision latency per step: a good canary walking 20 -> 40 -> ... -> 100 -> stable: from each
   check falling due (its time in KV) to nginx's workers routing the new weight: the daemon
   waking, two PromQL queries per version, the check-and-set write, proxy-reloader's push;
3. errors clients saw from a canary failing 5 % of its requests, from its first answer to its
   rollback live in nginx, against what its traffic share makes in `threshold` intervals (step %
   x error rate x requests per second x threshold x interval). The goal, 1.5, allows one more
   interval than `threshold`: the first check of a new version can hold for too little traffic,
   its series being younger than the window (Prometheus needs two samples for increase()), and
   a little for the decision latency and the randomness of 5 % over some hundred requests.

Each figure is printed beside its goal; --check exits 1 when one is missed.

    .venv/bin/python -m bench.analysis_bench [--runs 3] [--json] [--check]
"""
from __future__ import annotations

import statistics
import sys
import time

from bench.harness import bench_env, command_line, exit_code, goals_table, percentile, progress, report, with_check
from gatekeeper.promotion.promoter import set_mode
from testbed.load import ManyClients
from testbed.processes import PrometheusServer, wait_until
from testbed.stack import Stack

PORT, PROMETHEUS = 18104, 18105          # the proxy's status endpoint at PORT + 1000
INTERVAL = 3.0


def weight_live(stack: Stack, service: str) -> int:
    """The canary weight nginx's workers route by, from proxy-reloader's status endpoint (which
    shows a route only once the workers confirmed it)."""
    route = stack.proxy_status(f"/services/{service}") or {}
    return int((route.get("canary") or {}).get("weight") or 0)


def with_stable(stack: Stack, service: str, **settings) -> ManyClients:
    v1 = stack.deploy(f"{service}-v1", "demo:v1", SERVICE_NAME=service, **{"proxy.host": f"{service}.bench"})
    wait_until(lambda: (stack.stores.policies.get(service)[1] or None) and stack.stores.policies.get(service)[1].stable == "v1",
               120, f"{service} v1 stable")
    # the load's first answers count: it starts once nginx's workers route to v1, not once Consul says so
    wait_until(lambda: stack.proxy_serves([v1], service=service), 15, f"the proxy to serve {service} v1")
    set_mode(stack.stores, service, "progressive", {"interval": INTERVAL, **settings})
    return ManyClients("127.0.0.1", PORT, headers={"Host": f"{service}.bench"}, threads=4).start()


def canary(stack: Stack, service: str, name: str, environment=None) -> None:
    stack.deploy(name, "demo:v2", environment=environment, SERVICE_NAME=service, **{"proxy.host": f"{service}.bench"})


def breach_to_weight_zero(stack: Stack, service: str) -> float:
    load = with_stable(stack, service, step=20, threshold=1, min_requests=10)
    try:
        canary(stack, service, f"{service}-v2", {"DEMO_ERROR_RATE": "100%"})
        state = wait_until(lambda: stack.stores.analysis.get(service), 120, "the analysis to start")
        wait_until(lambda: weight_live(stack, service) > 0, 30, "the canary live")
        wait_until(lambda: weight_live(stack, service) == 0, 60, "the rollback live", interval=0.005)
        return time.time() - state.started
    finally:
        load.finish()


def step_latencies(stack: Stack, service: str) -> list:
    load = with_stable(stack, service, step=20, threshold=3, min_requests=10)
    out = []
    try:
        canary(stack, service, f"{service}-v2")
        state = wait_until(lambda: stack.stores.analysis.get(service), 120, "the analysis to start")
        weight = state.weight
        wait_until(lambda: weight_live(stack, service) == weight, 30, "the first step live")
        while True:
            due = stack.stores.analysis.get(service).next_check
            wait_until(lambda: weight_live(stack, service) != weight, 60, "the next step live", interval=0.005)
            out.append((time.time() - due) * 1000)
            weight = weight_live(stack, service)
            if weight == 0:                       # promoted: the canary is the stable version now
                return out
            # the step's state is written just after its policy: wait for it, or the next due is stale
            wait_until(lambda: stack.stores.analysis.get(service).next_check > due, 10, "the step's state")
    finally:
        load.finish()


def errors_before_rollback(stack: Stack, service: str) -> dict:
    step, rate, threshold = 20, 0.05, 3
    load = with_stable(stack, service, step=step, threshold=threshold, min_requests=40)
    try:
        start = time.monotonic()
        canary(stack, service, f"{service}-v2", {"DEMO_ERROR_RATE": "5%"})
        wait_until(lambda: (stack.stores.policies.get(service)[1] or None) and stack.stores.policies.get(service)[1].aborted == "v2",
                   120, "the rollback")
        wait_until(lambda: weight_live(stack, service) == 0, 30, "the rollback live", interval=0.005)
        end = time.monotonic()
        # the canary's first answer (stable v1 never fails, so any error is the canary's)
        first = min(a[0] for a in load.answers if a[0] >= start and (a[2] == "v2" or a[1] != 200))
        window = [a for a in load.answers if first <= a[0] <= end]
        errors = sum(1 for a in window if a[1] != 200)
        expected = step / 100 * rate * len(window) / (end - first) * threshold * INTERVAL
        steps = [e for e in stack.stores.history.of(service) if e["event"] == "analysis"]
        return {"errors": errors, "requests": len(window), "seconds": round(end - first, 2),
                "expected": round(expected, 1), "ratio": round(errors / expected, 2),
                "weight_at_rollback": max(e["weight"] for e in steps)}
    finally:
        load.finish()


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--runs", type=int, default=3, help="rounds of each measure (default %(default)s)")
    args = p.parse_args(argv)
    say = progress(args.json)
    breach, latencies, bad = [], [], []
    with bench_env() as env:
        prometheus = PrometheusServer(env.base, env.consul, PROMETHEUS).start()
        stack = Stack(env.consul, env.base, env.client, env.session, PORT, drain_seconds=1, service="bench",
                      gatekeeper_args=("--prometheus", f"http://{prometheus.address}")).start()
        try:
            for i in range(args.runs):
                breach.append(breach_to_weight_zero(stack, f"breach{i}"))
                say(f"run {i + 1}: breach -> weight 0 in {breach[-1]:.2f} s")
                latencies += step_latencies(stack, f"walk{i}")
                say(f"run {i + 1}: decision latencies {', '.join(f'{x:.0f}' for x in latencies[-5:])} ms")
                bad.append(errors_before_rollback(stack, f"bad{i}"))
                say(f"run {i + 1}: a 5 % canary: {bad[-1]['errors']} errors of {bad[-1]['requests']} in "
                    f"{bad[-1]['seconds']} s before its rollback at {bad[-1]['weight_at_rollback']} % "
                    f"({bad[-1]['ratio']} x what {3} intervals make)")
        finally:
            stack.stop()
            prometheus.stop()
    result = {"breach_to_weight_zero_s": [round(x, 2) for x in breach],
              "decision_latency_ms": [round(x) for x in latencies], "bad_canary": bad}
    b = statistics.median(breach)
    lat = sorted(latencies)
    p50, p95 = statistics.median(lat), percentile(lat, 95)
    worst = max(r["ratio"] for r in bad)
    rows = [(f"breach -> weight 0 in nginx, threshold 1, interval {INTERVAL:g} s: median s ({len(breach)} runs)",
             round(b, 2), f"<= {INTERVAL + 1:g}", b <= INTERVAL + 1),
            (f"decision latency per step, due -> new weight live: p50 / p95 ms ({len(lat)} steps)",
             f"{p50:.0f} / {p95:.0f}", "p50 <= 500", p50 <= 500),
            (f"client errors before a 5 % canary's rollback / errors its share makes in 3 intervals, worst of "
             f"{len(bad)}", f"{worst} ({', '.join(str(r['errors']) for r in bad)} errors)", "<= 1.5", worst <= 1.5),
            ("weight at rollback of the 5 % canaries", ", ".join(f"{r['weight_at_rollback']} %" for r in bad),
             "<= 20 %", all(r["weight_at_rollback"] <= 20 for r in bad))]
    result["goals"] = [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
