"""proxy_reloader and nginx on the real stack:

1. reloads for 100 changes spread over 1 s (target <= 5);
2. render + nginx -t + reload until the workers serve it, 100 services x 10 instances (<= 1 s);
3. proxy-reloader's CPU while idle, over 60 s;
4. requests/s through nginx vs straight to one instance, same concurrency (wrk; ratio >= 0.9);
5. failed requests over 20 consecutive deploys at a steady 200 req/s per client: a client
   opening a new connection per request, a keep-alive client, and a keep-alive client that
   retries an idempotent GET once when the server closed the connection before answering.

    .venv/bin/python -m bench.proxy_bench [--deploys 20] [--idle 60] [--json]
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from bench.harness import bench_env, command_line, progress, report
from catalog.consul_store import ConsulStore
from catalog.model import Instance
from catalog.routing import Pool, Route
from proxy_reloader.nginx import Nginx
from proxy_reloader.render import render
from tests.support.processes import Proc, python_module, wait_until
from tests.support.stack import Stack

PORT, ADMIN = 18100, 19100


def status(port=ADMIN):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())


def admit(store, service, port):
    inst = Instance(id=f"b:{service}-{port}:8080", service=service, address="127.0.0.1", port=port, version="v1",
                    container_id=f"c{port}", container_name=f"{service}-{port}", image="demo:v1",
                    registered_by="registrator@bench", proxy_path=f"/{service}/")
    store.register(inst)
    store.set_gate(inst, True, "bench")
    return inst


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RateClient(threading.Thread):
    """GET at a steady rate; counts failures. keepalive: reuse one connection; retry: resend an
    idempotent GET once when the connection was closed before any response byte."""

    def __init__(self, port, rate=200, keepalive=False, retry=False):
        super().__init__(daemon=True)
        self.port, self.rate, self.keepalive, self.retry = port, rate, keepalive, retry
        self.stopping = threading.Event()
        self.total = self.failed = 0
        self.errors = []
        self.conn = None

    def _once(self):
        if self.conn is None or not self.keepalive:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {} if self.keepalive else {"Connection": "close"}
        self.conn.request("GET", "/demo/1", headers=headers)
        resp = self.conn.getresponse()
        resp.read()
        if not self.keepalive:
            self.conn.close()
            self.conn = None
        return resp.status

    def run(self):
        interval, next_at = 1.0 / self.rate, time.monotonic()
        while not self.stopping.is_set():
            self.total += 1
            try:
                try:
                    code = self._once()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    self.conn = None
                    if not self.retry:
                        raise
                    code = self._once()           # what browsers and urllib3 do for idempotent requests
                if code != 200:
                    self.failed += 1
                    self.errors.append(f"HTTP {code}")
            except (OSError, http.client.HTTPException) as exc:
                self.failed += 1
                self.errors.append(type(exc).__name__)
                self.conn = None
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def wrk(url, seconds=10, conns=20):
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return float(m.group(1)) if m else 0.0


def main(argv=None) -> int:
    p = command_line(__doc__)
    p.add_argument("--deploys", type=int, default=20)
    p.add_argument("--idle", type=float, default=60.0)
    args = p.parse_args(argv)
    say = progress(args.json)
    if not shutil.which("wrk"):
        print("wrk is missing: `bash scripts/install.sh bench-tools` installs it", file=sys.stderr)
        return 2
    result = {}
    with bench_env() as env:
        run(env, args, say, result)
    report(result, args.json, "\n".join(
        f"{args.deploys} deploys at 200 req/s, {name}: {r['failed']} failed of {r['requests']} {r['errors']}"
        for name, r in result["deploys"].items()))
    return 0


def run(env, args, say, result: dict) -> None:
    client, base, consul, session = env.client, env.base, env.consul, env.session
    store = ConsulStore(consul.address, token=consul.management_token)
    # 1 + 3: a lone proxy-reloader supervising its nginx
    px = Proc("proxy-reloader", python_module(
        "proxy_reloader", "--consul", consul.address, "--consul-token-file", consul.token_file("proxy-reloader"),
        "--nginx-prefix", str(base / "px"), "--listen",
        f"127.0.0.1:{PORT + 1}", "--admin", f"127.0.0.1:{ADMIN}", "--exec"), base).start()
    wait_until(lambda: status()["served_version"], 30, "proxy-reloader up")
    time.sleep(1)
    before = status()["reloads"]
    t0 = time.monotonic()
    for i in range(100):
        admit(store, "burst", 40000 + i)
        time.sleep(max(0.0, t0 + (i + 1) / 100 - time.monotonic()))
    wait_until(lambda: len((status()["services"].get("burst") or {"stable": {"servers": []}})["stable"]["servers"]) == 100,
               30, "all routed")
    time.sleep(1.5)
    result["reloads_for_100_changes_in_1s"] = status()["reloads"] - before
    say(f"reloads for 100 registrations (200 changes) over {time.monotonic() - t0 - 1.5:.1f} s: "
        f"{result['reloads_for_100_changes_in_1s']}")
    pid = px.pid
    c0, w0 = cpu_seconds(pid), time.monotonic()
    time.sleep(args.idle)
    idle = (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100
    result["idle_cpu_percent"] = round(idle, 3)
    say(f"proxy-reloader idle CPU over {args.idle:.0f} s: {idle:.3f} % of one core")
    px.stop()

    # 2: 100 services x 10 instances, in process against a running nginx
    nginx = Nginx(str(base / "big"), listen=f"127.0.0.1:{PORT + 2}", reload_timeout=10)
    nginx.apply(render([], str(nginx.prefix), nginx.listen))
    subprocess.run([nginx.binary, "-p", str(nginx.prefix), "-c", str(nginx.conf)], check=True)
    wait_until(lambda: nginx.served_version(), 10, "nginx up")
    times = []
    for run in range(6):
        routes = [Route(f"svc{s}", f"/svc{s}/", "", Pool(f"v{run}", tuple(("127.0.0.1", 20000 + s * 10 + i)
                                                                      for i in range(10))))
                  for s in range(100)]
        t = time.monotonic()
        nginx.apply(render(routes, str(nginx.prefix), nginx.listen))
        times.append(time.monotonic() - t)
    os.kill(nginx.master_pid(), 15)
    result["render_validate_reload_100x10_s"] = {"median": round(statistics.median(times[1:]), 3),
                                                 "max": round(max(times[1:]), 3)}
    say(f"render + nginx -t + reload until served, 100 services x 10 instances: median "
        f"{statistics.median(times[1:]):.3f} s, max {max(times[1:]):.3f} s (5 runs)")

    # 4 + 5: the whole stack
    stack = Stack(consul, base / "stack", client, session, PORT, drain_seconds=2, service="bench")
    stack.start()
    try:
        c = stack.deploy("r0", "demo:v1", **{"gatekeeper.version": "r0"})
        wait_until(lambda: stack.served_version() == "v1", 120, "served")
        c.reload()
        direct = f"http://127.0.0.1:{c.attrs['NetworkSettings']['Ports']['8080/tcp'][0]['HostPort']}/demo/1"
        rps_direct = wrk(direct)
        rps_proxy = wrk(f"http://127.0.0.1:{PORT}/demo/1")
        result["rps"] = {"direct": rps_direct, "through_nginx": rps_proxy,
                         "ratio": round(rps_proxy / rps_direct, 3) if rps_direct else None}
        say(f"requests/s, wrk -t2 -c20 10 s: direct {rps_direct:.0f}, through nginx {rps_proxy:.0f}, "
            f"ratio {result['rps']['ratio']}")
        clients = {"new connection per request": RateClient(PORT),
                   "keep-alive": RateClient(PORT, keepalive=True),
                   "keep-alive, idempotent retry": RateClient(PORT, keepalive=True, retry=True)}
        for cl in clients.values():
            cl.start()
        for i in range(1, args.deploys + 1):
            image, answer = ("demo:v2", "v2") if i % 2 else ("demo:v1", "v1")
            stack.deploy(f"r{i}", image, **{"gatekeeper.version": f"r{i}"})
            wait_until(lambda: stack.served_version() == answer, 120, f"deploy {i} served")
            old = f"r{i - 1}"
            wait_until(lambda: (stack.containers[old].reload(), stack.containers[old].status)[1] != "running",
                       60, "the old version drained and stopped")
            stack.containers.pop(old).remove(force=True)
            say(f"deploy {i}/{args.deploys} done: " + ", ".join(f"{n} {c.failed}/{c.total}" for n, c in clients.items()))
        for cl in clients.values():
            cl.stopping.set()
            cl.join(10)
        result["deploys"] = {n: {"requests": c.total, "failed": c.failed, "errors": sorted(set(c.errors))}
                             for n, c in clients.items()}
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
