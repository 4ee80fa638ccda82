"""registrator on the real engine and Consul:

1. registration latency: Docker `start` event (its own timestamp) -> the instance in Consul's
   catalog (seen by a blocking query), p50/p95 over N container starts;
2. resync time with 200 running containers: a fresh registrator against an empty Consul (every
   instance registered) and a restarted one (nothing changed, nothing re-registered);
3. `docker stop` -> out of traffic: the instance's address gone from the table nginx's workers
   route by (as proxy-reloader confirms it), on the whole stack, median of 10.

Each figure is printed beside its goal; --check exits 1 when one is missed.

    .venv/bin/python -m bench.registrator_bench [--starts 100] [--containers 200] [--json] [--check]
"""
from __future__ import annotations

import re
import statistics
import sys
import threading
import time

import requests

from bench.harness import bench_env, command_line, exit_code, goals_table, percentile, progress, report, with_check
from testbed.processes import ConsulServer, Proc, python_module, wait_until
from testbed.stack import TEST_LABEL, Stack

BENCH_LABEL = "proxystack.bench"


class CatalogWatcher(threading.Thread):
    """Timestamps the first sighting of each instance id in the catalog (blocking queries)."""

    def __init__(self, address, service, headers):
        super().__init__(daemon=True)
        self.url, self.headers = f"http://{address}/v1/catalog/service/{service}", headers
        self.seen, self.stopping = {}, threading.Event()

    def run(self):
        index = 0
        while not self.stopping.is_set():
            try:
                r = requests.get(self.url, params={"index": index, "wait": "5s"}, timeout=10, headers=self.headers)
            except requests.RequestException:
                time.sleep(0.1)
                continue
            now = time.time()
            index = int(r.headers.get("X-Consul-Index", 0))
            for entry in r.json():
                self.seen.setdefault(entry["ServiceID"], now)


def registrator(consul, base, session, name="registrator"):
    return Proc(name, python_module("registrator", "--consul", consul.address, "--consul-token-file",
                                    consul.token_file("registrator"), "--hostname", "bench",
                                    "--filter-label", f"{BENCH_LABEL}={session}", "--resync", "600"), base).start()


def servers(stack) -> list:
    """The servers nginx's workers route the demo service to, as proxy-reloader confirmed them."""
    return ((stack.proxy_status("/services/demo") or {}).get("stable") or {}).get("servers", [])


def sync_seconds(proc, nth):
    def found():
        times = re.findall(r"sync: .* in ([0-9.]+) s", proc.log())
        return float(times[nth - 1]) if len(times) >= nth else None
    return wait_until(found, 300, f"sync #{nth}")


def start_light(client, session, service, i):
    return client.containers.run("demo:v1", ["sleep", "3600"], detach=True, publish_all_ports=True,
                                 name=f"{session}-{i}", labels={"SERVICE_NAME": service, BENCH_LABEL: session,
                                                                TEST_LABEL: session})


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--starts", type=int, default=100)
    p.add_argument("--containers", type=int, default=200)
    args = p.parse_args(argv)
    say = progress(args.json)
    result = {}
    with bench_env() as env:
        run(env, args, say, result)
    reg, sync, stop = result["registration_ms"], result["resync_s"], result["stop_to_out_of_traffic_ms"]
    rows = [
        ("registration, start event -> catalog: p50 ms", reg["p50"], "<= 50", reg["p50"] <= 50),
        ("registration, start event -> catalog: p95 ms", reg["p95"], "<= 250", reg["p95"] <= 250),
        (f"resync of {sync['containers']} containers into an empty Consul, s", sync["cold"], "<= 5", sync["cold"] <= 5),
        (f"resync of {sync['containers']} containers, nothing changed, s", sync["warm"], "", None),
        ("docker stop -> out of the workers' table: p50 ms", stop["p50"], "<= 500", stop["p50"] <= 500),
    ]
    result["goals"] = [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


def run(env, args, say, result: dict) -> None:
    client, base, consul, session = env.client, env.base, env.consul, env.session
    # 1. registration latency
    reg = registrator(consul, base, session)
    sync_seconds(reg, 1)
    watcher = CatalogWatcher(consul.address, "lat", consul.headers)
    watcher.start()
    events = client.api.events(decode=True, filters={"type": "container", "event": "start",
                                                     "label": f"{BENCH_LABEL}={session}"})
    starts = {}
    reader = threading.Thread(target=lambda: [starts.setdefault(e["Actor"]["Attributes"]["name"], e["timeNano"] / 1e9)
                                              for e in events], daemon=True)
    reader.start()
    say(f"starting {args.starts} containers one by one ...")
    for i in range(args.starts):
        start_light(client, session, "lat", i)
        time.sleep(0.1)
    wait_until(lambda: len(watcher.seen) >= args.starts, 120, "every instance in the catalog")
    watcher.stopping.set()
    lat = [(watcher.seen[f"bench:{name}:8080"] - t) * 1000 for name, t in starts.items()
           if f"bench:{name}:8080" in watcher.seen]
    result["registration_ms"] = {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                                 "max": round(max(lat), 1), "n": len(lat)}
    say(f"registration latency (start event -> catalog): p50 {percentile(lat, 50):.1f} ms, "
        f"p95 {percentile(lat, 95):.1f} ms over {len(lat)} starts")
    reg.stop()

    # 2. resync with N running containers
    for i in range(args.starts, args.containers):
        start_light(client, session, "lat", i)
    say(f"{args.containers} containers running")
    consul.stop()
    consul = env.consul = ConsulServer(base / "fresh", http_port=18600, port_base=18400).start()   # empty catalog
    reg = registrator(consul, base, session, "registrator-cold")
    cold = sync_seconds(reg, 1)
    reg.stop()
    reg = registrator(consul, base, session, "registrator-warm")
    warm = sync_seconds(reg, 1)
    reg.stop()
    registered = len(requests.get(f"http://{consul.address}/v1/agent/services", timeout=5,
                                  headers=consul.headers).json())
    result["resync_s"] = {"containers": args.containers, "cold": cold, "warm": warm, "registered": registered}
    say(f"resync of {args.containers}: {cold:.2f} s into an empty Consul, {warm:.2f} s when nothing changed "
        f"({registered} instances registered)")
    for c in client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={session}"}):
        c.remove(force=True)

    # 3. docker stop -> out of traffic, on the whole stack
    stack = Stack(consul, base / "stack", client, session, 18100, drain_seconds=2)
    stack.start()
    try:
        stack.deploy("base", "demo:v1")
        wait_until(lambda: stack.served_version() == "v1", 120, "v1 served")
        times = []
        for i in range(10):
            c = stack.deploy(f"extra{i}", "demo:v1")
            c.reload()
            port = c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
            server = f"127.0.0.1:{port}"
            wait_until(lambda: server in servers(stack), 60, "instance in the workers' table")
            t0 = time.monotonic()
            threading.Thread(target=c.stop, kwargs={"timeout": 10}, daemon=True).start()
            wait_until(lambda: server not in servers(stack), 30, "instance out of the workers' table", interval=0.005)
            times.append((time.monotonic() - t0) * 1000)
        result["stop_to_out_of_traffic_ms"] = {"p50": round(statistics.median(times), 1),
                                               "max": round(max(times), 1), "n": len(times)}
        say(f"docker stop -> out of the workers' table: median {statistics.median(times):.0f} ms, "
            f"max {max(times):.0f} ms over {len(times)}")
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
