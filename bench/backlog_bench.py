"""No queue behind bulk work: a real container started while gatekeeper works through a backlog of
thousands, every figure beside its goal, in one run.

The stack (registrator, gatekeeper, proxy-reloader, nginx) runs; `--instances` instances (10
per service) are written at once through Consul's catalog API on 10 nodes, their gates passing
and no verdict stored (a bulk import, a wiped verdict store): gatekeeper must give each a
verdict and correct its gate. Meanwhile:

1. real containers are started one after the other: registered (registrator) -> its test starts
   (the TESTING verdict is written; goal: p50 <= 1 s, whatever the backlog), and container start
   -> admitted;
2. one bench instance's gate flipped in Consul -> live in nginx's workers (goal: p50 <= 50 ms,
   with gatekeeper busy beside it);
3. how long gatekeeper took over the whole backlog (every bulk instance with a verdict).

    .venv/bin/python -m bench.backlog_bench [--instances 10000] [--containers 5] [--check] [--json]
"""
from __future__ import annotations

import concurrent.futures
import statistics
import sys
import time

import requests

from bench.harness import bench_env, command_line, exit_code, goals_table, percentile, progress, report, with_check
from bench.proxy_bench import TablePeek, catalog_register, instance
from catalog.model import TESTING
from catalog.stores import Stores
from proxy_reloader.render import Settings
from testbed.processes import wait_until
from testbed.stack import Stack

PORT = 18130
NODES = 10


def register(session, consul, inst, passing: bool) -> None:
    """As a host's agent syncs an instance to the catalog: on one of NODES nodes."""
    catalog_register(session, consul, inst, passing, node=f"bulk-host-{int(inst.container_name.split('-')[-1]) % NODES}")


def import_backlog(env, count: int, say) -> list:
    session = requests.Session()
    bulk = [instance(f"bulk{n // 10}", n, 20000 + n % 20000) for n in range(count)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: register(session, env.consul, i, True), bulk))
    say(f"  {count} instances written to the catalog in {time.monotonic() - t0:.1f} s, gates passing, no verdicts")
    return bulk


def with_verdicts(stores, bulk) -> int:
    ids = set(stores.verdicts.ids())
    return sum(1 for i in bulk if i.id in ids)


def real_containers(stack, stores, count: int, say):
    """Each started while the backlog lasts: registered -> test started, start -> admitted (s)."""
    to_test, to_admit = [], []
    for n in range(count):
        started = time.monotonic()
        c = stack.deploy(f"real{n}", "demo:v1")
        iid = wait_until(lambda: next((ri.instance.id for ri in stores.instances.of("demo")
                                       if ri.instance.container_id == c.id), None), 60, "the container registered",
                         interval=0.01)
        registered = time.monotonic()
        wait_until(lambda: (lambda v: v is not None and (v.state == TESTING or v.final))(stores.verdicts.get(iid)),
                   120, "its test started", interval=0.01)
        to_test.append(time.monotonic() - registered)
        stack.wait(lambda: any(ri.instance.id == iid and ri.admitted for ri in stores.instances.of("demo")), 120,
                   "admitted")
        to_admit.append(time.monotonic() - started)
        say(f"  container {n + 1}/{count}: test started {to_test[-1]:.2f} s after its registration, "
            f"admitted {to_admit[-1]:.2f} s after its start")
        stack.remove_containers()
    return to_test, to_admit


def flips(env, push, say, changes: int = 20):
    """One instance's gate flipped in the catalog -> the workers' table follows (ms)."""
    session = requests.Session()
    inst = instance("flip", 0, 21000)
    register(session, env.consul, inst, True)
    wait_until(lambda: (push.backends_of("flip") or {}).get("stable"), 60, "the flipped service in the table")
    live = []
    for k in range(changes):
        passing = k % 2 == 1
        t = time.monotonic()
        register(session, env.consul, inst, passing)
        while bool((push.backends_of("flip") or {}).get("stable")) != passing:
            if time.monotonic() - t > 30:
                raise TimeoutError("a gate change never reached nginx")
            time.sleep(0.001)
        live.append((time.monotonic() - t) * 1000)
        time.sleep(0.2)
    say(f"  one gate change -> live in workers: p50 {statistics.median(live):.1f} ms ({changes} changes)")
    return live


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--instances", type=int, default=10_000, help="bulk instances written at once (10 per service)")
    p.add_argument("--containers", type=int, default=5, help="real containers started during the backlog")
    args = p.parse_args(argv)
    say = progress(args.json)
    with bench_env() as env:
        stores = Stores.connect(env.consul.address, token=env.consul.management_token, timeout=30)
        stack = Stack(env.consul, env.base, env.client, env.session, PORT).start()
        try:
            push = TablePeek(Settings(str(stack.nginx.prefix), "").socket, "")
            wait_until(lambda: (stack.nginx.prefix / "admin" / "secret").exists(), 30, "the push secret")
            push.secret = (stack.nginx.prefix / "admin" / "secret").read_text().strip()
            say(f"== {args.instances} instances at once, gatekeeper running")
            t0 = time.monotonic()
            bulk = import_backlog(env, args.instances, say)
            say(f"== {args.containers} real containers started during the backlog")
            to_test, to_admit = real_containers(stack, stores, args.containers, say)
            pending = len(bulk) - with_verdicts(stores, bulk)
            say(f"  bulk instances still without a verdict after the last container: {pending}")
            say("== one gate change -> nginx's workers, gatekeeper busy beside it")
            live = flips(env, push, say)
            wait_until(lambda: with_verdicts(stores, bulk) == len(bulk), 1800, "a verdict for every bulk instance",
                       interval=2.0)
            backlog_s = time.monotonic() - t0
            say(f"  every bulk instance has a verdict after {backlog_s:.0f} s")
        finally:
            stack.stop()
    result = {"instances": args.instances,
              "test_start_s": {"p50": round(statistics.median(to_test), 2), "max": round(max(to_test), 2)},
              "admitted_s": {"p50": round(statistics.median(to_admit), 2), "max": round(max(to_admit), 2)},
              "pending_when_last_admitted": pending,
              "gate_change_live_ms": {"p50": round(statistics.median(live), 1), "p95": round(percentile(live, 95), 1)},
              "backlog_s": round(backlog_s)}
    t, a, g = result["test_start_s"], result["admitted_s"], result["gate_change_live_ms"]
    rows = [
        (f"registered -> its test starts, during a backlog of {args.instances}, p50 / max s",
         f"{t['p50']} / {t['max']}", "p50 <= 1", t["p50"] <= 1.0),
        ("container start -> admitted, p50 / max s", f"{a['p50']} / {a['max']}", "", None),
        ("bulk instances still without a verdict then", pending, "(a backlog)", None),
        (f"one gate change -> live in workers, {args.instances} instances, gatekeeper busy, p50 / p95 ms",
         f"{g['p50']} / {g['p95']}", "p50 <= 50", g["p50"] <= 50),
        ("the whole backlog given verdicts, s", result["backlog_s"], "", None),
    ]
    result["goals"] = [{"measure": m, "figure": str(f), "goal": goal, "met": ok} for m, f, goal, ok in rows]
    report(result, args.json, "\n" + goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
