"""The dashboard's cost and speed, every figure beside its goal, in one run, against a Consul
of its own holding SERVICES services (a policy and 30 history events each, one with a rolled-
back progressive rollout):

1. a page open and idle: PAGES live streams held for IDLE seconds with nothing changing in
   Consul; the requests the dashboard sends Consul (counted by a relay in between, per page per
   minute; goal <= 3), the dashboard's CPU (goal <= 1 % of one core) and the "change" events the
   pages hear (goal 0);
2. a change in Consul -> the open page hears "change": p50 over CHANGES writes (goal <= 1 s);
3. the overview and a service's page (with its rollout chart) served, p50 of 20 each (goal <= 500 ms).

    .venv/bin/python -m bench.dashboard_bench [--services 100] [--pages 10] [--idle 60] [--check] [--json]
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.harness import command_line, exit_code, goals_table, percentile, progress, report, with_check
from catalog.model import PROGRESSIVE, RoutingPolicy
from catalog.stores import Stores
from testbed.dashboard import DashboardServer
from testbed.processes import ConsulServer

CONSUL_HTTP, CONSUL_BASE, RELAY, DASHBOARD = 18620, 18420, 18622, 18621


class CountingRelay:
    """A TCP relay in front of Consul that counts the HTTP requests sent through it."""

    def __init__(self, listen_port: int, target_port: int):
        self.listen_port, self.target_port = listen_port, target_port
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def _pipe(self, reader, writer, count: bool):
        try:
            while data := await reader.read(65536):
                if count:
                    self.requests += data.count(b" HTTP/1.1\r\n")
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _client(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))

    def start(self) -> "CountingRelay":
        async def serve():
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.listen_port)
            self.ready.set()
        threading.Thread(target=lambda: (self.loop.run_until_complete(serve()), self.loop.run_forever()),
                         daemon=True).start()
        self.ready.wait(10)
        return self


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Page:
    """One open page: its live stream, the events it heard with when."""

    def __init__(self, http: requests.Session, url: str):
        self.events = []
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._listen, args=(http, url), daemon=True)
        self.thread.start()

    def _listen(self, http, url):
        try:
            with http.get(url + "/events", stream=True, timeout=600) as r:
                self.opened.set()
                event = ""
                for line in r.iter_lines(decode_unicode=True):
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((time.monotonic(), event))
        except requests.RequestException:
            pass                   # the dashboard stopped at the end of the run


def seed(stores: Stores, services: int) -> None:
    for n in range(services):
        name = f"svc{n:03d}"
        stores.policies.put(RoutingPolicy(name, stable="v1", mode=PROGRESSIVE), cas=0)
        for i in range(30):
            stores.history.add(name, "weight", version="v2", weight=i, by="bench")
    t = time.time()
    stores.history.add("svc000", "analysis started", version="v2", weight=10,
                       settings={"interval": 4, "step": 10, "max_weight": 100, "success_rate": 99.0, "p99_ms": 500.0,
                                 "min_requests": 40, "threshold": 3})
    for i in range(1, 4):
        stores.history.add("svc000", "analysis", version="v2", weight=10, result="fail", reason=f"failed {i} of 3",
                           canary={"requests": 800.0, "success_rate": 95.0, "p99_ms": 7.0},
                           stable={"requests": 8000.0, "success_rate": 100.0, "p99_ms": 5.0}, time=t + 4 * i)
    stores.history.add("svc000", "aborted", version="v2", by="gatekeeper (analysis)", reason="rolled back at 10 %")


def timed_get(http, url, n=20):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = http.get(url, timeout=30)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200, f"{url}: {r.status_code} {r.text[:300]}"
    return statistics.median(times)


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--pages", type=int, default=10)
    p.add_argument("--idle", type=float, default=60.0, help="seconds the pages stay open with nothing changing")
    p.add_argument("--changes", type=int, default=10)
    args = p.parse_args(argv)
    say = progress(args.json)
    base = Path(tempfile.mkdtemp(prefix="proxystack-bench-dashboard-"))
    consul = ConsulServer(base, http_port=CONSUL_HTTP, port_base=CONSUL_BASE).start()
    dashboard = None
    try:
        stores = Stores.connect(consul.address, token=consul.management_token, timeout=10)
        say(f"seeding {args.services} services with 30 history events each")
        seed(stores, args.services)
        relay = CountingRelay(RELAY, CONSUL_HTTP).start()
        dashboard = DashboardServer(base, f"127.0.0.1:{RELAY}", DASHBOARD).start()
        viewer = open(consul.token_file("viewer")).read().strip()

        say("pages served")
        http = dashboard.login(viewer)
        overview_ms = timed_get(http, dashboard.url + "/")
        service_ms = timed_get(http, dashboard.url + "/services/svc000")
        assert "rollout-chart" in http.get(dashboard.url + "/services/svc000", timeout=30).text

        say(f"{args.pages} pages open and idle for {args.idle:.0f} s")
        pages = [Page(dashboard.login(viewer), dashboard.url) for _ in range(args.pages)]
        for page in pages:
            page.opened.wait(10)
        time.sleep(3)                                       # their blocking queries are in place
        before_requests, before_cpu = relay.requests, cpu_seconds(dashboard.proc.pid)
        idle_start = time.monotonic()
        time.sleep(args.idle)
        idle = time.monotonic() - idle_start
        requests_per_page_minute = (relay.requests - before_requests) / args.pages / (idle / 60)
        cpu_pct = 100 * (cpu_seconds(dashboard.proc.pid) - before_cpu) / idle
        idle_changes = sum(1 for page in pages for t, e in page.events if e == "change" and t >= idle_start)

        say(f"{args.changes} changes -> the open pages hear them")
        latencies = []
        for i in range(args.changes):
            heard = len(pages[0].events)
            written = time.monotonic()
            stores.history.add("svc001", "weight", version="v2", weight=i, by="bench change")
            deadline = written + 10
            while time.monotonic() < deadline and not any(
                    e == "change" for _, e in pages[0].events[heard:]):
                time.sleep(0.005)
            arrived = next((t for t, e in pages[0].events[heard:] if e == "change"), None)
            latencies.append(((arrived or deadline) - written) * 1000)
            time.sleep(0.5)
        change_p50 = percentile(latencies, 50)
    finally:
        if dashboard:
            dashboard.stop()
        consul.stop()

    rows = [
        (f"idle: Consul requests per open page per minute ({args.pages} pages, {idle:.0f} s)",
         f"{requests_per_page_minute:.2f}", "<= 3", requests_per_page_minute <= 3),
        ("idle: the dashboard's CPU, % of one core", f"{cpu_pct:.2f} %", "<= 1 %", cpu_pct <= 1.0),
        ("idle: change events the pages heard", idle_changes, "0", idle_changes == 0),
        (f"a change in Consul -> the open page hears it, p50 of {args.changes}", f"{change_p50:.0f} ms", "<= 1000 ms",
         change_p50 <= 1000),
        (f"overview served, {args.services} services, p50 of 20", f"{overview_ms:.0f} ms", "<= 500 ms", overview_ms <= 500),
        ("a service's page with its rollout chart, p50 of 20", f"{service_ms:.0f} ms", "<= 500 ms", service_ms <= 500),
    ]
    result = {"services": args.services, "pages": args.pages, "idle_seconds": round(idle, 1),
              "consul_requests_per_page_minute": round(requests_per_page_minute, 2), "idle_cpu_pct": round(cpu_pct, 2),
              "idle_change_events": idle_changes, "change_to_page_p50_ms": round(change_p50, 1),
              "change_to_page_ms": [round(x, 1) for x in latencies],
              "overview_p50_ms": round(overview_ms, 1), "service_page_p50_ms": round(service_ms, 1),
              "goals": [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]}
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
