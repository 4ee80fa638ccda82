"""gatekeeper on the real stack, p50 over N runs each:

1. gate pass -> first proxied request on the new version (auto mode): from the verdict's
   finish time (written by gatekeeper) to the first response through nginx from the new version;
2. promote -> 100 % of traffic (manual mode, canary at 0 %): from the promote call (in
   process, so CLI start-up is not counted) to the first response from the promoted version
   for a client the split never sent there.

Each figure is printed beside its goal; --check exits 1 when one is missed.

    .venv/bin/python -m bench.promotion_bench [--runs 10] [--json] [--check]
"""
from __future__ import annotations

import statistics
import sys
import time
import uuid

from bench.harness import bench_env, command_line, exit_code, goals_table, progress, report, with_check
from gatekeeper.promotion.promoter import promote, set_mode
from testbed.processes import wait_until
from testbed.stack import Stack

PORT = 18100


def first_response_from(stack: Stack, version: str, timeout: float = 60.0) -> float:
    """Poll through nginx (a new client id each time) until `version` answers; return that time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stack.served_version({"X-Client-Id": uuid.uuid4().hex}) == version:
            return time.time()
        time.sleep(0.002)
    raise TimeoutError(f"{version} never answered through the proxy")


def image_for(i: int) -> str:
    return "demo:v2" if i % 2 else "demo:v1"


def answers(i: int) -> str:
    return "v2" if i % 2 else "v1"


def deploy_measuring_gate_to_proxy(stack: Stack, i: int) -> float:
    """Deploy release `i` (auto mode); ms from its verdict's finish to its first proxied answer."""
    c = stack.deploy(f"r{i}", image_for(i), **{"gatekeeper.version": f"r{i}"})
    ri = wait_until(lambda: (lambda r: r if r and r.gate_status == "passing" else None)(stack.instance(c)),
                    120, "the gate to pass")
    seen = first_response_from(stack, answers(i))
    return (seen - stack.stores.verdicts.get(ri.instance.id).finished) * 1000


def measure(stack: Stack, runs: int, say, gate_to_proxy: list, promote_to_all: list) -> None:
    stack.deploy("r0", image_for(0), **{"gatekeeper.version": "r0"})
    wait_until(lambda: stack.served_version() == "v1", 120, "the first version served")
    for i in range(1, runs + 1):
        gate_to_proxy.append(deploy_measuring_gate_to_proxy(stack, i))
        say(f"gate pass -> proxied, run {i}: {gate_to_proxy[-1]:.0f} ms")
        for name in [n for n in stack.containers if n != f"r{i}"]:
            stack.containers.pop(name).remove(force=True)
    set_mode(stack.stores, stack.service, "manual")
    for i in range(runs + 1, 2 * runs + 1):
        stack.deploy(f"r{i}", image_for(i), **{"gatekeeper.version": f"r{i}"})
        wait_until(lambda: stack.stores.policies.get(stack.service)[1].canary == f"r{i}", 120, "the canary")
        time.sleep(1.5)                       # let the canary-at-0 config settle first
        assert stack.served_version({"X-Client-Id": "probe"}) != answers(i)
        t0 = time.time()
        promote(stack.stores, stack.service, full=True)
        seen = first_response_from(stack, answers(i))
        promote_to_all.append((seen - t0) * 1000)
        say(f"promote -> all traffic, run {i - runs}: {promote_to_all[-1]:.0f} ms")
        for name in [n for n in stack.containers if n != f"r{i}"]:
            stack.containers.pop(name).remove(force=True)


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    say = progress(args.json)
    gate_to_proxy, promote_to_all = [], []
    with bench_env() as env:
        stack = Stack(env.consul, env.base, env.client, env.session, PORT, service="bench",
                      gatekeeper_args=("--keep-old",)).start()
        try:
            measure(stack, args.runs, say, gate_to_proxy, promote_to_all)
        finally:
            stack.stop()
    result = {"gate_pass_to_first_proxied_ms": {"p50": round(statistics.median(gate_to_proxy), 1),
                                                "max": round(max(gate_to_proxy), 1), "n": len(gate_to_proxy)},
              "promote_to_all_traffic_ms": {"p50": round(statistics.median(promote_to_all), 1),
                                            "max": round(max(promote_to_all), 1), "n": len(promote_to_all)}}
    gate, prom = result["gate_pass_to_first_proxied_ms"], result["promote_to_all_traffic_ms"]
    rows = [(f"gate pass -> first proxied answer from the new version: p50 ms ({gate['n']} runs)", gate["p50"],
             "<= 100", gate["p50"] <= 100),
            (f"promote --full -> 100 % of traffic: p50 ms ({prom['n']} runs)", prom["p50"], "<= 500",
             prom["p50"] <= 500)]
    result["goals"] = [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
