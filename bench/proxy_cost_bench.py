"""Where the stack's cost per proxied request goes, measured on a core of the proxy's own.

Each proxy runs one worker pinned to one CPU; wrk and the backend (nginx `return 200`, local, no
container in between) run on the other. The figure is the worker's user CPU time per request:
what the proxy's own code spends. (Its kernel time, printed apart, moves with how often the two
cores wake each other, by more than the differences measured here.) Contenders, each measured
right beside the hand-written proxy (bench.harness.beside), 2 s per run:

- hand-written: bench.proxy_bench's hand-written nginx reverse proxy (same headers, same log);
- the stack: its dynamic-mode nginx.conf as proxy-reloader renders it, 10 routes pushed
  (--routes: as many as asked, to see that their number costs nothing per request);
- the same config with the stack's own Lua taken away: no per-request metrics (no log_by_lua),
  the router's answer a constant (set_by_lua returns the service: no lookup, no checks), the
  balancer's peer a constant (set_current_peer of the backend: no pool, no retries);
- and that one with no Lua balancer either (a static upstream).
Each step takes off what a part costs; what the last still adds over the hand-written proxy is
the rest (nginx entering Lua for the route, the test on the router's answer). Apart from the
steps, the Lua floor: the hand-written proxy entering nginx's Lua module where the stack does
(a set_by_lua, a Lua balancer, a log_by_lua), doing nothing there (bench.stack_variants). The
total moves by about 0.5 us from run to run, a part by as much.

The same five proxies are then counted exactly: each restarted as one process under valgrind's
callgrind, warmed up (the JIT's traces made), and the instructions it runs for 3,000 keep-alive
requests counted alone. An instruction count does not move from run to run, so it shows a
change of a few hundred instructions that CPU time cannot (it does not weigh cache misses).
Goal: the stack adds at most 10 us of user CPU to a request
(bench.proxy_bench's goal for the same figure, measured there unpinned).

    .venv/bin/python -m bench.proxy_cost_bench [--rounds 12] [--routes 10] [--requests 3000] [--check] [--json]
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.harness import beside, command_line, exit_code, goals_table, progress, report, with_check, wrk_missing
from bench.proxy_bench import FAST, HAND_CONF, SAME_HEADERS, nginx_workers
from bench.stack_variants import constant_peer, constant_route, empty_lua_entries, no_metrics, replace, static_upstream
from catalog.routing import Pool, Route
from proxy_reloader import backends
from proxy_reloader.nginx import Nginx, find_nginx, modules_path
from proxy_reloader.push import PushClient, ensure_secret
from proxy_reloader.render import DYNAMIC, Settings, render
from testbed.processes import wait_until

BACKEND, HAND, FLOOR = 18140, 18141, 18139
STACK = 18142               # and one port more for each step below
CPUS = sorted(os.sched_getaffinity(0))
PROXY_CPU, LOAD_CPU = CPUS[0], CPUS[-1]     # main() refuses to run with only one


# contender -> the steps applied to the stack's config, in order; and the part each step takes away
STEPS = {
    "stack": (),
    "no Lua code": (no_metrics, constant_route, constant_peer),
    "no Lua balancer": (no_metrics, constant_route, constant_peer, static_upstream),
}
LUA_FLOOR = "Lua floor"
PARTS = (("the stack's own Lua: route lookup and checks, the balancer's choice, the metrics", "stack", "no Lua code"),
         ("nginx's Lua balancer itself (balancer_by_lua, set_current_peer)", "no Lua code", "no Lua balancer"),
         ("the rest: set_by_lua's entry and its arguments, the test on its answer", "no Lua balancer", "hand"))


def pin(pid: int, cpu: int) -> None:
    os.sched_setaffinity(pid, {cpu})


def cpu_seconds(prefix: Path):
    """(user, system) CPU seconds of the workers of the nginx under `prefix`."""
    ws = nginx_workers(prefix)
    return sum(u for _, u, _ in ws), sum(s for _, _, s in ws)


def start_nginx(prefix: Path, cpu: int) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    subprocess.run([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], check=True, timeout=20)
    wait_until(lambda: nginx_workers(prefix), 10, f"nginx under {prefix} has its worker")
    for pid, _, _ in nginx_workers(prefix):
        pin(pid, cpu)


def stop_nginx(prefix: Path) -> None:
    try:
        os.kill(int((prefix / "nginx.pid").read_text()), 15)
    except (OSError, ValueError):
        pass


def backend(base: Path) -> Path:
    prefix = base / "backend"
    (prefix / "logs").mkdir(parents=True)
    conf = replace(FAST, r"worker_processes 1;", f"worker_processes 1; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;")
    (prefix / "nginx.conf").write_text(replace(conf, r"listen 8080;", f"listen 127.0.0.1:{BACKEND};"))
    start_nginx(prefix, LOAD_CPU)
    return prefix


def hand_written(base: Path, lua: bool = False) -> Path:
    """The hand-written proxy, one worker; with `lua`, the Lua floor."""
    prefix = base / ("lua-floor" if lua else "hand")
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    conf = HAND_CONF.format(prefix=prefix, port=BACKEND, listen=FLOOR if lua else HAND, headers=SAME_HEADERS)
    conf = replace(conf, r"worker_processes \d+;", "worker_processes 1;")
    if lua:
        conf = empty_lua_entries(conf, BACKEND, modules_path(find_nginx()))
    (prefix / "nginx.conf").write_text(conf)
    start_nginx(prefix, PROXY_CPU)
    return prefix


def stack(base: Path, name: str, listen: int, steps, routes: int):
    """The stack's dynamic-mode nginx with one worker, `steps` applied to its config, and `routes`
    services pushed (the measured one at /fast/); returns its prefix and what pushes them again."""
    n = Nginx(str(base / name.replace(" ", "-").replace(",", "")), listen=f"127.0.0.1:{listen}")
    settings = Settings(str(n.prefix), n.listen, workers="1", mode=DYNAMIC, modules=n.modules_path())
    client = PushClient(settings.socket, ensure_secret(settings.secret))      # makes the socket's folder
    n.apply(render([], str(n.prefix), n.listen, settings=settings))
    conf = n.conf.read_text()
    for step in steps:
        conf = step(conf, BACKEND)
    n.conf.write_text(conf)
    start_nginx(n.prefix, PROXY_CPU)
    wait_until(lambda: n.served_version(), 20, f"nginx ({name})")
    names = [f"r{i}" for i in range(routes - 1)] + ["fast"]
    entries = {s: backends.entry(Route(s, f"/{s}/", "", Pool("v1", (("127.0.0.1", BACKEND),), ("v1",)))) for s in names}

    def push(timeout=20):
        client.push(backends.push_body(int(time.time() * 1000), entries, full=True))
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{listen}/fast/", timeout=5).status == 200,
                   timeout, f"the route at /fast/ ({name})")

    push()
    return n.prefix, push


def measure(port: int, prefix: Path, seconds: int):
    """(user us, system us) of the proxy's worker per request over one wrk run pinned to the load CPU."""
    u0, s0 = cpu_seconds(prefix)
    out = subprocess.run(["wrk", "-t1", "-c10", f"-d{seconds}s", f"http://127.0.0.1:{port}/fast/"], capture_output=True,
                         text=True, timeout=seconds + 30, preexec_fn=lambda: pin(0, LOAD_CPU)).stdout
    done = re.search(r"(\d+) requests in", out)
    if not done or int(done.group(1)) == 0:
        raise RuntimeError(f"wrk against 127.0.0.1:{port} made no request:\n{out}")
    u1, s1 = cpu_seconds(prefix)
    n = int(done.group(1))
    return (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6


def keep_alive(port: int, n: int) -> None:
    """`n` requests to /fast/ on one keep-alive connection, each answered 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(n):
            conn.request("GET", "/fast/")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"127.0.0.1:{port}/fast/ answered {resp.status} under callgrind")
    finally:
        conn.close()


def instructions(prefix: Path, port: int, requests: int, push=None) -> float:
    """Instructions per request of the nginx under `prefix`, counted by callgrind: stopped, started
    again as one process (no master) under valgrind, its table pushed again (`push`), 2,000
    requests to warm up and a pause, then `requests` counted alone."""
    stop_nginx(prefix)
    wait_until(lambda: not (prefix / "nginx.pid").exists(), 20, f"nginx under {prefix} stopped")
    conf = prefix / "nginx-counted.conf"
    conf.write_text("daemon off;\nmaster_process off;\n" + (prefix / "nginx.conf").read_text())
    out = prefix / "callgrind.out"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", nginx, "-p", str(prefix),
                             "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def answers():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/fast/", timeout=5)
            except urllib.error.HTTPError:
                pass
            return True
        wait_until(answers, 120, f"nginx under callgrind ({prefix.name})")
        if push:
            push(120)
        keep_alive(port, 2000)
        # past the worker's once-a-second upkeep, which collects the garbage of the index the push
        # made it build: that collection is the push's cost, not the counted requests'
        time.sleep(2.5)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True, timeout=60)
        keep_alive(port, requests)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True, timeout=60)
        dump = Path(f"{out}.1").read_text()
        total = re.search(r"^(?:summary|totals): (\d+)", dump, re.M)
        if not total:
            raise RuntimeError(f"callgrind's dump {out}.1 has no total")
        return int(total.group(1)) / requests
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def valgrind_missing() -> bool:
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return False
    print("valgrind is missing: `bash scripts/install.sh bench-tools` installs it", file=sys.stderr)
    return True


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--rounds", type=int, default=12, help="pairs of wrk runs per contender, which one goes first swapped every round")
    p.add_argument("--seconds", type=int, default=2, help="length of each wrk run")
    p.add_argument("--routes", type=int, default=10, help="services in the stack's pushed table (each with its route)")
    p.add_argument("--requests", type=int, default=3000, help="requests counted under callgrind per proxy")
    args = p.parse_args(argv)
    say = progress(args.json)
    if wrk_missing() or valgrind_missing():
        return 2
    if PROXY_CPU == LOAD_CPU:
        print("this benchmark pins the proxy and the load to two different CPUs; this machine lets it use one",
              file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="proxystack-cost-"))
    prefixes, pushes = {}, {}
    try:
        prefixes["backend"] = backend(base)
        prefixes["hand"] = hand_written(base)
        prefixes[LUA_FLOOR] = hand_written(base, lua=True)
        ports = {"hand": HAND, LUA_FLOOR: FLOOR}
        for i, (name, steps) in enumerate(STEPS.items()):
            ports[name] = STACK + i
            prefixes[name], pushes[name] = stack(base, name, STACK + i, steps, args.routes)

        def run(name):
            user, system = measure(ports[name], prefixes[name], args.seconds)
            say(f"    {name}: {user:.2f} us user, {system:.2f} us system per request")
            return user, system

        contenders = (*STEPS, LUA_FLOOR)
        say(f"== {len(contenders)} proxies beside the hand-written one, {args.rounds} rounds of {args.seconds} s runs")
        pairs = beside(run, "hand", contenders, args.rounds)
        say(f"== instructions per request under callgrind, {args.requests} requests each")
        counted = {}
        for name in ("hand", *contenders):
            counted[name] = instructions(prefixes[name], ports[name], args.requests, pushes.get(name))
            say(f"    {name}: {counted[name]:,.0f} instructions per request")
    finally:
        for prefix in prefixes.values():
            stop_nginx(prefix)
        shutil.rmtree(base, ignore_errors=True)
    hand = [h for name in contenders for _, h in pairs[name]]
    result = {
        "hand_user_us": round(statistics.median(u for u, _ in hand), 2),
        "hand_system_us": round(statistics.median(s for _, s in hand), 2),
        "adds_user_us": {name: round(statistics.median(c[0] - h[0] for c, h in pairs[name]), 2) for name in contenders},
        "adds_user_us_per_round": {name: [round(c[0] - h[0], 2) for c, h in pairs[name]] for name in contenders},
        "stack_system_us": round(statistics.median(c[1] for c, _ in pairs["stack"]), 2),
    }
    adds = dict(result["adds_user_us"], hand=0.0)
    result["parts_us"] = {part: round(adds[a] - adds[b], 2) for part, a, b in PARTS}
    result["instructions_per_request"] = {name: round(n) for name, n in counted.items()}
    result["parts_instructions"] = {part: round(counted[a] - counted[b]) for part, a, b in PARTS}
    rows = [("user CPU per request, hand-written proxy, us", result["hand_user_us"], "", None),
            ("the stack adds, us", adds["stack"], "<= 10", adds["stack"] <= 10)]
    rows += [(f"  of which {part}, us", cost, "", None) for part, cost in result["parts_us"].items()]
    rows.append(("kernel CPU per request, hand-written / stack, us",
                 f"{result['hand_system_us']} / {result['stack_system_us']}", "", None))
    hand_n, stack_n = counted["hand"], counted["stack"]
    rows.append(("instructions per request (callgrind), hand-written / stack",
                 f"{hand_n:,.0f} / {stack_n:,.0f} (+{(stack_n - hand_n) / hand_n:.0%})", "", None))
    rows += [(f"  of which {part}", f"{n:,}", "", None) for part, n in result["parts_instructions"].items()]
    floor_n = counted[LUA_FLOOR]
    rows.append(("the Lua floor (hand-written entering Lua as the stack does, doing nothing) adds, us / instructions",
                 f"{adds[LUA_FLOOR]} / {floor_n - hand_n:,.0f} (+{(floor_n - hand_n) / hand_n:.0%})",
                 "(of the stack's " + f"{adds['stack']} / {stack_n - hand_n:,.0f})", None))
    result["goals"] = [{"measure": m, "figure": str(f), "goal": g, "met": ok} for m, f, g, ok in rows]
    report(result, args.json, "\n" + goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
