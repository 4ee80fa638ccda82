"""proxy_reloader and nginx on the real stack, every figure beside its goal, in one run:

1. deploys through the gate (auto mode) with keep-alive clients that never retry (20
   connections, 20 req/s each): failed requests and nginx reloads (new worker generations),
   dynamic mode vs reload mode side by side (goal: 0 failed and 0 reloads in dynamic mode);
2. in the same deploys, gate pass -> first proxied answer from the new version, p50 and p95
   (goal: p50 <= 100 ms in dynamic mode);
3. throughput and p99 against a fast backend (nginx `return 200` in a container): straight to
   it, through the stack's nginx (dynamic mode: Lua balancer and metrics on), and through a
   hand-written minimal nginx reverse proxy with the same worker count, each proxy right beside
   the hand-written one and the pair's order swapped every round (goal: the median of the pairs'
   ratios >= 0.95);
4. a canary weight written to Consul -> live in nginx's workers (goal: p50 <= 100 ms, no reload);
5. route lookup at scale: the stack's nginx (dynamic mode, routes in the pushed table) with 10
   routes and with 10,000, each beside the hand-written proxy in the same way (goal:
   each >= 0.95 x the hand-written one, and 10,000 / 10 routes >= 0.95: lookup cost flat); and,
   for what those ratios can reach, the Lua floor beside it the same way: the hand-written proxy
   entering nginx's Lua module where the stack does (route, peer, log phase), doing nothing there;
6. N new services, one every ~0.12 s (1,000 over two minutes by default), each registered
   and then its gate opened: nginx reloads (goal: 0) and gate open -> the service's servers in
   the workers' table (goal: p50 <= 100 ms);
7. with S services x 10 instances admitted in Consul (written through the catalog API on 20
   nodes, as 20 hosts' agents would): proxy-reloader's CPU while they are admitted; one instance
   change -> live in nginx's workers, from the Consul write through the real watches (goal:
   p50 <= 50 ms); a full render + validate of every instance (goal <= 1 s).

    .venv/bin/python -m bench.proxy_bench [--deploys 20] [--new-services 1000] [--services 1000] [--check] [--json]
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import zlib

from bench.harness import bench_env, beside, command_line, exit_code, goals_table, percentile, progress, report, with_check, wrk_missing
from bench.promotion_bench import deploy_measuring_gate_to_proxy
from bench.stack_variants import empty_lua_entries
from catalog.stores import Stores
from catalog.model import Instance
from catalog.routing import Pool, Route
from proxy_reloader import backends
from proxy_reloader.nginx import Nginx, modules_path
from proxy_reloader.push import PushClient, ensure_secret
from proxy_reloader.render import DYNAMIC, RELOAD, Settings, render
from testbed.load import KeepAliveLoad
from testbed.nginx_workers import WorkerGenerations
from testbed.processes import Proc, python_module, wait_until
from testbed.stack import TEST_LABEL, Stack

STACK_PORTS = {DYNAMIC: 18100, RELOAD: 18101}      # status endpoints at +1000
HAND, LONE, LONE_ADMIN = 18102, 18103, 19103         # and HAND + 2: the minimal hand-written proxy
ROUTES_FEW, ROUTES_MANY = 18108, 18109              # the stack's nginx with 10 and with 10,000 routes
LUA_FLOOR = 18111                                   # the hand-written one entering Lua, doing nothing


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_workers(prefix) -> list:
    """(pid, user CPU s, system CPU s) of each worker process of the nginx whose pid file is under `prefix`."""
    master = int((prefix / "nginx.pid").read_text())
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:          # a process that ended meanwhile
            continue
        if int(fields[1]) == master:
            out.append((int(d), int(fields[11]) / tick, int(fields[12]) / tick))
    return out


def worker_cpu_seconds(prefix) -> float:
    """CPU time of the worker processes of the nginx whose pid file is under `prefix`."""
    return sum(user + system for _, user, system in nginx_workers(prefix))


def wrk(url, seconds=5, conns=20):
    """(requests/s, p99 ms, requests) from `wrk -t2 -cN --latency`."""
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url], capture_output=True,
                         text=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out)
    done = re.search(r"(\d+) requests in", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return (float(rps.group(1)) if rps else 0.0,
            float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
            int(done.group(1)) if done else 0)


# --- 1 + 2: deploys under keep-alive load, both modes ----------------------------------------
def wrk_costed(url, prefix=None, seconds=4):
    """(requests/s, p99 ms, CPU per request in us) of a wrk run: the CPU time the workers of the
    nginx under `prefix` spent on it (None when no prefix is given)."""
    before = worker_cpu_seconds(prefix) if prefix else 0.0
    rps, p99, done = wrk(url, seconds=seconds)
    cpu = (worker_cpu_seconds(prefix) - before) / max(1, done) * 1e6 if prefix else None
    return rps, p99, cpu


def deploys(env, mode, n, say):
    (env.base / f"stack-{mode}").mkdir()
    stack = Stack(env.consul, env.base / f"stack-{mode}", env.client, f"{env.session}{mode[0]}",
                  STACK_PORTS[mode], drain_seconds=2, service=f"bench-{mode}", mode=mode).start()
    try:
        stack.deploy("r0", "demo:v1", **{"gatekeeper.version": "r0"})
        wait_until(lambda: stack.served_version() == "v1", 120, "the first version served")
        generations = WorkerGenerations(stack.nginx.master_pid())
        generations.start()
        load = KeepAliveLoad("127.0.0.1", stack.listen_port, connections=20, rate=20, max_seconds=900).start()
        gate_ms = []
        for i in range(1, n + 1):
            gate_ms.append(deploy_measuring_gate_to_proxy(stack, i))
            wait_until(lambda: (stack.proxy_status(f"/services/{stack.service}").get("stable") or {})
                       .get("version") == f"r{i}", 60, f"r{i} stable")
            say(f"  {mode}: deploy {i}/{n}: gate pass -> proxied {gate_ms[-1]:.0f} ms; "
                f"{len(load.failures)} failed of {load.total}")
        load.finish()
        return {"failed": len(load.failures), "requests": load.total,
                "rate": round(load.total / load.elapsed), "reloads": generations.finish(),
                "errors": sorted(set(f.split(":")[0] for f in load.failures)),
                "gate_to_proxy_ms": {"p50": round(statistics.median(gate_ms), 1), "p95": round(percentile(gate_ms, 95), 1)}}
    finally:
        stack.stop()


# --- 3: a fast backend, three ways -----------------------------------------------------------
FAST = ("worker_processes 1; events {} http { access_log off; server { listen 8080; "
        "location / { return 200 '{\"ok\": 1}'; } } }")
# The same job as the stack's nginx (proxy headers, buffered access log, keep-alive upstream), written by
# hand: a static upstream and no Lua. MINIMAL drops the proxy headers as well.
SAME_HEADERS = """proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Request-ID $request_id;"""
HAND_CONF = """worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # logged as the stack's nginx logs: buffered, one write per 64 KiB or per second
    access_log {prefix}/logs/access.log combined buffer=64k flush=1s;
    server_tokens off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
    upstream fast {{ server 127.0.0.1:{port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{listen};
        location /fast/ {{
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-Proto $scheme;
            {headers}
        }}
    }}
}}
"""


def fast_backend(env):
    # an image with nginx: the debootstrap base, or the compose stack's image
    image = next(t for t in ("proxystack-base:bookworm-3", "proxystack/stack:latest") if env.client.images.list(name=t))
    c = env.client.containers.run(image, ["sh", "-c", "printf '%s' \"$CONF\" >/tmp/n.conf && nginx -c /tmp/n.conf "
                                                      "-g 'daemon off; pid /tmp/n.pid;'"],
                                  environment={"CONF": FAST}, detach=True, ports={"8080/tcp": None},
                                  labels={TEST_LABEL: env.session}, name=f"{env.session}-fast")
    wait_until(lambda: (c.reload(), c.attrs["NetworkSettings"]["Ports"].get("8080/tcp"))[1], 20, "fast backend")
    port = int(c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200, 20,
               "fast backend answers")
    return port


def hand_written_proxy(env, port, name, listen, headers, lua=False):
    """The hand-written proxy; with `lua`, entering nginx's Lua module where the stack does,
    doing nothing there (bench.stack_variants.empty_lua_entries: the Lua floor)."""
    prefix = env.base / name
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = HAND_CONF.format(prefix=prefix, port=port, listen=listen, headers=headers)
    (prefix / "nginx.conf").write_text(empty_lua_entries(conf, port, modules_path(nginx)) if lua else conf)
    subprocess.run([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], check=True, timeout=20)
    return prefix


def table_nginx(env, name, listen, routes, port):
    """The stack's dynamic-mode nginx (its own config, Lua router and metrics) with `routes`
    services in its pushed table, each at /rN/ on the fast backend, and the measured one at /fast/."""
    n = Nginx(str(env.base / name), listen=f"127.0.0.1:{listen}")
    settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path())
    client = PushClient(settings.socket, ensure_secret(settings.secret))
    n.apply(render([], str(n.prefix), n.listen, settings=settings))
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)
    wait_until(lambda: n.served_version(), 20, f"nginx with {routes} routes")
    names = [f"r{i}" for i in range(routes - 1)] + ["fast"]
    entries = {name: backends.entry(Route(name, f"/{name}/", "", Pool("v1", (("127.0.0.1", port),), ("v1",))))
               for name in names}
    client.push(backends.push_body(int(time.time() * 1000), entries, full=True))
    wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{listen}/fast/", timeout=1).status == 200, 20,
               f"the route at /fast/ among {routes}")
    return n.prefix


def throughput(env, stores, say, rounds=10):
    """The backend direct and the minimal proxy twice each, for context; then each of the stack's
    proxies measured with wrk right beside the hand-written one, `rounds` times, the pair's order
    swapped every round (bench.harness.beside); the median of the pairs' ratios. On 2 shared
    cores requests/s swing by +-15 % from one run to the next, mostly together for two runs side by
    side; so beside requests/s, the proxies' own cost too: their workers' CPU time per request,
    and what the stack adds to the hand-written proxy's."""
    port = fast_backend(env)
    admit(stores, "fast", port, n=0)
    wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{LONE}/fast/", timeout=1).status == 200, 30,
               "the stack's nginx routes the fast backend")
    hands = []
    try:
        hands.append(hand_written_proxy(env, port, "hand", HAND, SAME_HEADERS))
        hands.append(hand_written_proxy(env, port, "minimal", HAND + 2, ""))
        hands.append(table_nginx(env, "routes-10", ROUTES_FEW, 10, port))
        hands.append(table_nginx(env, "routes-10000", ROUTES_MANY, 10_000, port))
        hands.append(hand_written_proxy(env, port, "lua-floor", LUA_FLOOR, SAME_HEADERS, lua=True))
    except BaseException:
        for prefix in hands:
            os.kill(int((prefix / "nginx.pid").read_text()), 15)
        raise
    urls = {"direct": f"http://127.0.0.1:{port}/fast/", "stack": f"http://127.0.0.1:{LONE}/fast/",
            "hand": f"http://127.0.0.1:{HAND}/fast/", "minimal": f"http://127.0.0.1:{HAND + 2}/fast/",
            "routes10": f"http://127.0.0.1:{ROUTES_FEW}/fast/", "routes10k": f"http://127.0.0.1:{ROUTES_MANY}/fast/",
            "floor": f"http://127.0.0.1:{LUA_FLOOR}/fast/"}
    prefixes = {"stack": env.base / "px", "hand": hands[0], "minimal": hands[1], "routes10": hands[2],
                "routes10k": hands[3], "floor": hands[4]}

    def run(name):
        """(requests/s, p99 ms, the workers' CPU per request in us or None)"""
        rps, p99, cpu = wrk_costed(urls[name], prefixes.get(name))
        say(f"    {name}: {rps:.0f} req/s" + (f", {cpu:.1f} us CPU per request" if cpu is not None else ""))
        return rps, p99, cpu

    contenders = ("stack", "routes10", "routes10k", "floor")
    try:
        context = {name: [run(name) for _ in range(2)] for name in ("direct", "minimal")}
        pairs = beside(run, "hand", contenders, rounds)
    finally:
        for prefix in hands:
            os.kill(int((prefix / "nginx.pid").read_text()), 15)
    runs = {name: [c for c, _ in pairs[name]] for name in contenders}
    runs["hand"] = [h for name in contenders for _, h in pairs[name]]
    runs.update(context)
    out = {n: {"rps": round(statistics.median(v[0] for v in vals)), "p99_ms": round(statistics.median(v[1] for v in vals), 2)}
           for n, vals in runs.items()}
    ratios = {name: [c[0] / h[0] for c, h in pairs[name]] for name in contenders}
    out["stack_vs_hand"] = round(statistics.median(ratios["stack"]), 3)
    out["stack_vs_minimal"] = round(out["stack"]["rps"] / out["minimal"]["rps"], 3)
    for name in ("routes10", "routes10k", "floor"):
        out[f"{name}_vs_hand"] = round(statistics.median(ratios[name]), 3)
        out[f"{name}_vs_hand_per_round"] = [round(x, 3) for x in ratios[name]]
    out["routes10k_vs_routes10"] = round(statistics.median(
        m / f for m, f in zip(ratios["routes10k"], ratios["routes10"])), 3)
    for name in prefixes:
        out[name]["cpu_us_per_request"] = round(statistics.median(v[2] for v in runs[name]), 1)
    out["stack_adds_cpu_us"] = round(statistics.median(c[2] - h[2] for c, h in pairs["stack"]), 1)
    out["stack_vs_hand_per_round"] = [round(x, 3) for x in ratios["stack"]]
    return out


# --- 6: new services one by one ----------------------------------------------------------------
def catalog_deregister(session, consul, inst: Instance):
    node = f"bench-host-{zlib.crc32(inst.id.encode()) % HOSTS}"
    session.put(f"http://{consul.address}/v1/catalog/deregister", json={"Node": node, "ServiceID": inst.id},
                headers=consul.headers, timeout=30).raise_for_status()


def new_services(env, push, say, count, seconds):
    """`count` services, one every seconds/count: each registered with its gate closed, then its
    gate opened; the time from that write to its servers in the workers' table, and the worker
    generations nginx started meanwhile. The services are removed afterwards."""
    import requests
    session = requests.Session()
    generations = WorkerGenerations(int((env.base / "px" / "nginx.pid").read_text()))
    generations.start()
    pace, started, live = seconds / count, time.monotonic(), []
    made = []
    for k in range(count):
        inst = instance(f"new{k}", 0, 22000 + k % 1000)
        made.append(inst)
        catalog_register(session, env.consul, inst, False)          # registered: a route that answers 503
        time.sleep(pace / 2)
        t = time.monotonic()
        catalog_register(session, env.consul, inst, True)           # the gate opens
        while not ((push.backends_of(inst.service) or {}).get("stable") or {}).get("servers"):
            if time.monotonic() - t > 30:
                raise TimeoutError(f"{inst.service}'s open gate never reached nginx")
            time.sleep(0.001)
        live.append((time.monotonic() - t) * 1000)
        if (k + 1) % 100 == 0:
            say(f"  {k + 1}/{count} new services: gate open -> in the table p50 {statistics.median(live):.1f} ms")
        time.sleep(max(0.0, started + (k + 1) * pace - time.monotonic()))
    reloads = generations.finish()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: catalog_deregister(session, env.consul, i), made))
    say(f"  {count} new services in {time.monotonic() - started:.0f} s: {reloads} reloads; gate open -> in the "
        f"table p50 {statistics.median(live):.1f} ms, p95 {percentile(live, 95):.1f} ms")
    return {"n": count, "seconds": round(time.monotonic() - started), "reloads": reloads,
            "p50": round(statistics.median(live), 1), "p95": round(percentile(live, 95), 1)}


# --- 7: a big catalog ------------------------------------------------------------------------
def instance(service, n, port):
    return Instance(id=f"b:{service}-{n}:8080", service=service, address="127.0.0.1", port=port, version="v1",
                    container_id=f"c{service}{n}", container_name=f"{service}-{n}", image="demo:v1",
                    registered_by="registrator@bench", proxy_path=f"/{service}/")


def admit(stores, service, port, n=0):
    inst = instance(service, n, port)
    stores.instances.register(inst)
    stores.instances.apply_gate(inst, True, "bench")
    return inst


HOSTS = 20


def catalog_register(session, consul, inst: Instance, passing: bool, node: str = ""):
    """One instance as a host's agent syncs it to the catalog: the service and its gate check,
    on `node` or one of HOSTS nodes (a single agent holding 10,000 services re-syncs its whole
    list on every registration, which is not the shape measured here)."""
    node = node or f"bench-host-{zlib.crc32(inst.id.encode()) % HOSTS}"
    body = {"Node": node, "Address": "127.0.0.1",
            "Service": {"ID": inst.id, "Service": inst.service, "Address": inst.address, "Port": inst.port,
                        "Tags": inst.all_tags(), "Meta": inst.meta()},
            "Checks": [{"CheckID": inst.gate_check_id, "Name": "integration tests (gatekeeper)", "ServiceID": inst.id,
                        "Status": "passing" if passing else "critical", "Output": "bench"}]}
    r = session.put(f"http://{consul.address}/v1/catalog/register", json=body, headers=consul.headers, timeout=30)
    r.raise_for_status()


def big_catalog(env, stores, services, px, push, say):
    import requests
    session = requests.Session()
    t0, c0 = time.monotonic(), cpu_seconds(px.pid)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda sn: catalog_register(session, env.consul, instance(f"svc{sn[0]}", sn[1], 20000 + sn[1]), True),
                      [(s, i) for s in range(services) for i in range(10)]))
    say(f"  {services * 10} instances written to Consul in {time.monotonic() - t0:.1f} s")
    last = f"svc{services - 1}"
    wait_until(lambda: len(((push.backends_of(last) or {}).get("stable") or {}).get("servers", [])) == 10
               and push.state()["services"] >= services, 900, "every instance in nginx's table")
    time.sleep(2)                              # the last watches settle
    admitting = {"seconds": round(time.monotonic() - t0, 1), "cpu_seconds": round(cpu_seconds(px.pid) - c0, 1)}
    say(f"  {services * 10} instances admitted in {admitting['seconds']} s; proxy-reloader CPU "
        f"{admitting['cpu_seconds']} s")
    inst = instance("svc0", 0, 20000)
    live = []
    for k in range(20):
        passing = k % 2 == 1
        want = 10 if passing else 9
        t = time.monotonic()
        catalog_register(session, env.consul, inst, passing)
        while len(((push.backends_of("svc0") or {}).get("stable") or {}).get("servers", [])) != want:
            if time.monotonic() - t > 30:
                raise TimeoutError("an instance change never reached nginx")
            time.sleep(0.001)
        live.append((time.monotonic() - t) * 1000)
        time.sleep(0.3)
    say(f"  one instance change -> live in workers: p50 {statistics.median(live):.1f} ms, "
        f"p95 {percentile(live, 95):.1f} ms ({len(live)} changes)")
    return admitting, {"p50": round(statistics.median(live), 1), "p95": round(percentile(live, 95), 1), "n": len(live)}


def weight_changes(env, stores, px, push, say, changes=20):
    """A canary weight written to Consul (check-and-set, as `gatekeeper weight` does) -> the
    workers route by it: ms, and the worker generations it cost."""
    from catalog.model import RoutingPolicy
    for n, version in enumerate(("v1", "v2")):
        inst = Instance(id=f"b:split-{n}:8080", service="split", address="127.0.0.1", port=21000 + n, version=version,
                        container_id=f"csplit{n}", container_name=f"split-{n}", image="demo:v1",
                        registered_by="registrator@bench", proxy_path="/split/")
        stores.instances.register(inst)
        stores.instances.apply_gate(inst, True, "bench")
    index, _ = stores.policies.get("split")
    stores.policies.put(RoutingPolicy("split", stable="v1", canary="v2", weight=0, mode="manual"), index)
    wait_until(lambda: (push.backends_of("split") or {}).get("canary"), 30, "the canary in the table")
    generations = WorkerGenerations(int((env.base / "px" / "nginx.pid").read_text()))
    generations.start()
    times = []
    for k in range(changes):
        weight = 100 if k % 2 == 0 else 0
        index, policy = stores.policies.get("split")
        t = time.monotonic()
        assert stores.policies.put(RoutingPolicy(**{**policy.__dict__, "weight": weight}), index)
        while (push.backends_of("split") or {}).get("weight") != weight:
            if time.monotonic() - t > 30:
                raise TimeoutError("a weight change never reached nginx")
            time.sleep(0.001)
        times.append((time.monotonic() - t) * 1000)
        time.sleep(0.2)
    reloads = generations.finish()
    say(f"  weight change -> live in workers: p50 {statistics.median(times):.1f} ms, p95 {percentile(times, 95):.1f} ms; "
        f"{reloads} reloads")
    return {"p50": round(statistics.median(times), 1), "p95": round(percentile(times, 95), 1), "n": len(times),
            "reloads": reloads}


def full_render(env, services):
    """Render + nginx -t of every instance, as proxy-reloader does it in each mode, 3 runs each."""
    routes = [Route(f"svc{s}", f"/svc{s}/", "", Pool("v1", tuple(("127.0.0.1", 20000 + s * 10 + i) for i in range(10)),
                                                      ("v1",) * 10)) for s in range(services)]
    out = {}
    for mode in (DYNAMIC, RELOAD):
        nginx = Nginx(str(env.base / f"render-{mode}"))
        settings = Settings(str(nginx.prefix), "127.0.0.1:1", mode=mode, modules=nginx.modules_path())
        ensure_secret(settings.secret)               # the admin folder the socket lives in
        times = []
        for _ in range(3):
            t = time.monotonic()
            text = render(routes, settings.prefix, settings.listen, settings=settings)
            if mode == DYNAMIC:
                backends.write_table(settings.table, 1, {r.service: backends.entry(r) for r in routes})
            nginx.validate(text).unlink()
            times.append(time.monotonic() - t)
        out[mode] = round(statistics.median(times), 3)
    return out


class TablePeek(PushClient):
    def backends_of(self, service):
        status, raw = self._call("GET", f"/backends/{service}")
        return json.loads(raw) if status == 200 else None


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--deploys", type=int, default=20)
    p.add_argument("--new-services", type=int, default=1000, help="services added one by one for part 6")
    p.add_argument("--new-seconds", type=float, default=120.0, help="over how long part 6 adds them")
    p.add_argument("--services", type=int, default=1000, help="services of 10 instances each for part 7")
    args = p.parse_args(argv)
    say = progress(args.json)
    if wrk_missing():
        return 2
    result = {}
    with bench_env() as env:
        for mode in (DYNAMIC, RELOAD):
            say(f"== {args.deploys} deploys under keep-alive load, {mode} mode")
            result[f"deploys_{mode}"] = deploys(env, mode, args.deploys, say)
        stores = Stores.connect(env.consul.address, token=env.consul.management_token)
        px = Proc("proxy-reloader", python_module(
            "proxy_reloader", "--consul", env.consul.address, "--consul-token-file",
            env.consul.token_file("proxy-reloader"), "--nginx-prefix", str(env.base / "px"), "--listen",
            f"127.0.0.1:{LONE}", "--admin", f"127.0.0.1:{LONE_ADMIN}", "--exec"), env.base).start()
        try:
            push = TablePeek(Settings(str(env.base / "px"), "").socket, "")
            wait_until(lambda: (env.base / "px" / "admin" / "secret").exists(), 30, "the push secret")
            push.secret = (env.base / "px" / "admin" / "secret").read_text().strip()
            wait_until(lambda: push.state(), 30, "nginx under proxy-reloader")
            say("== throughput against a fast backend")
            result["throughput"] = throughput(env, stores, say)
            say("== canary weight changes")
            result["weight_change_live_ms"] = weight_changes(env, stores, px, push, say)
            say(f"== {args.new_services} new services over {args.new_seconds:.0f} s")
            result["new_services"] = new_services(env, push, say, args.new_services, args.new_seconds)
            say(f"== {args.services} services x 10 instances")
            result["admitting"], result["instance_change_live_ms"] = big_catalog(env, stores, args.services, px, push, say)
        finally:
            px.stop()
        result["full_render_validate_s"] = full_render(env, args.services)
    d, r, t = result[f"deploys_{DYNAMIC}"], result[f"deploys_{RELOAD}"], result["throughput"]
    n = args.services * 10
    rows = [
        (f"failed requests, {args.deploys} deploys, keep-alive, dynamic", f"{d['failed']} of {d['requests']}", "0", d["failed"] == 0),
        (f"failed requests, {args.deploys} deploys, keep-alive, reload", f"{r['failed']} of {r['requests']}", "(today)", None),
        ("nginx reloads (worker generations), dynamic / reload", f"{d['reloads']} / {r['reloads']}", "0 / -", d["reloads"] == 0),
        ("keep-alive load, req/s, dynamic / reload", f"{d['rate']} / {r['rate']}", ">= 400", min(d["rate"], r["rate"]) >= 400),
        ("gate pass -> proxied, dynamic p50 / p95 ms", f"{d['gate_to_proxy_ms']['p50']} / {d['gate_to_proxy_ms']['p95']}", "p50 <= 100", d["gate_to_proxy_ms"]["p50"] <= 100),
        ("gate pass -> proxied, reload p50 / p95 ms", f"{r['gate_to_proxy_ms']['p50']} / {r['gate_to_proxy_ms']['p95']}", "(today)", None),
        ("req/s direct / stack / hand-written / minimal", f"{t['direct']['rps']} / {t['stack']['rps']} / {t['hand']['rps']} / {t['minimal']['rps']}", "", None),
        ("p99 ms direct / stack / hand-written / minimal", f"{t['direct']['p99_ms']} / {t['stack']['p99_ms']} / {t['hand']['p99_ms']} / {t['minimal']['p99_ms']}", "", None),
        ("proxy workers' CPU per request, stack / hand-written / minimal, us",
         f"{t['stack']['cpu_us_per_request']} / {t['hand']['cpu_us_per_request']} / {t['minimal']['cpu_us_per_request']}", "", None),
        ("CPU the stack's Lua adds per request over hand-written, us", t["stack_adds_cpu_us"], "<= 10",
         t["stack_adds_cpu_us"] <= 10),
        ("stack nginx / hand-written (same headers), req/s", t["stack_vs_hand"],
         "(rounds " + ", ".join(str(x) for x in t["stack_vs_hand_per_round"]) + ")", None),
        ("stack nginx / minimal hand-written, req/s", t["stack_vs_minimal"], "", None),
        ("stack nginx, 10 routes in the table / hand-written, req/s (each pair)",
         f"{t['routes10_vs_hand']} ({', '.join(str(x) for x in t['routes10_vs_hand_per_round'])})", ">= 0.95",
         t["routes10_vs_hand"] >= 0.95),
        ("stack nginx, 10,000 routes in the table / hand-written, req/s (each pair)",
         f"{t['routes10k_vs_hand']} ({', '.join(str(x) for x in t['routes10k_vs_hand_per_round'])})", ">= 0.95",
         t["routes10k_vs_hand"] >= 0.95),
        ("10,000 routes / 10 routes, req/s (lookup cost flat)", t["routes10k_vs_routes10"], ">= 0.95",
         t["routes10k_vs_routes10"] >= 0.95),
        ("the Lua floor: hand-written entering Lua as the stack does, doing nothing / hand-written, req/s (each pair)",
         f"{t['floor_vs_hand']} ({', '.join(str(x) for x in t['floor_vs_hand_per_round'])})", "(what the ratios above can reach)",
         None),
        (f"nginx reloads while {result['new_services']['n']} new services came, one by one",
         result["new_services"]["reloads"], "0", result["new_services"]["reloads"] == 0),
        ("new service's gate opens -> in the workers' table, p50 / p95 ms",
         f"{result['new_services']['p50']} / {result['new_services']['p95']}", "p50 <= 100",
         result["new_services"]["p50"] <= 100),
        ("canary weight written -> live in workers, p50 / p95 ms",
         f"{result['weight_change_live_ms']['p50']} / {result['weight_change_live_ms']['p95']}", "p50 <= 100",
         result["weight_change_live_ms"]["p50"] <= 100),
        ("nginx reloads for 20 weight changes", result["weight_change_live_ms"]["reloads"], "0",
         result["weight_change_live_ms"]["reloads"] == 0),
        (f"one instance change -> live, {n} instances, p50 / p95 ms",
         f"{result['instance_change_live_ms']['p50']} / {result['instance_change_live_ms']['p95']}", "p50 <= 50",
         result["instance_change_live_ms"]["p50"] <= 50),
        (f"full render + validate, {n} instances, dynamic / reload s",
         f"{result['full_render_validate_s'][DYNAMIC]} / {result['full_render_validate_s'][RELOAD]}", "<= 1 s",
         result["full_render_validate_s"][DYNAMIC] <= 1.0),
        (f"proxy-reloader CPU while {n} instances are admitted",
         f"{result['admitting']['cpu_seconds']} s in {result['admitting']['seconds']} s", "", None),
    ]
    result["goals"] = [{"measure": m, "figure": str(f), "goal": g, "met": ok} for m, f, g, ok in rows]
    report(result, args.json, "\n" + goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
