"""A fleet past what one machine can run as real hosts: three Consul servers and N client agents,
each agent standing for one host (no engine), on loopback addresses of their own. Instances are
registered through each agent as that host's registrator would (the same InstanceStore calls, the
gate check passed as that host's registrator applies it), and one CatalogMirror per agent (what
each host's proxy-reloader runs), each in a process of its own, follows the whole catalog
through its own agent.

Used by tests/e2e/test_fleet.py (correctness: every change reaches every proxy, nothing lost)
and bench/fleet_bench.py (how long, and what it costs the servers)."""
from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import requests

from catalog.mirror import MAX_STALE, WAIT, CatalogMirror
from catalog.model import Instance
from catalog.stores import Stores
from testbed.processes import ROOT, Proc, find_binary, stop_all, wait_until

SERVER_IPS = ["127.0.0.31", "127.0.0.32", "127.0.0.33"]


def agent_ip(i: int) -> str:
    return f"127.0.1.{i + 1}"


class Fleet:
    def __init__(self, base: Path, agents: int = 20):
        self.base, self.n = base, agents
        self.servers: List[Proc] = []
        self.agents: List[Proc] = []
        self.followers: List[subprocess.Popen] = []
        self.ready: List[threading.Event] = []
        self._answers: Dict[int, int] = {}
        self.seen: List[Dict[str, float]] = []          # per mirror: instance id -> when first admitted there
        self.gone_seen: List[Dict[str, float]] = []     # per mirror: instance id -> when it left
        self.lock = threading.Lock()
        self._stores: Dict[int, Stores] = {}

    def _agent(self, name: str, ip: str, server: bool) -> Proc:
        data = self.base / name
        data.mkdir(parents=True, exist_ok=True)
        args = [find_binary("consul"), "agent", "-node", name, "-data-dir", str(data), "-bind", ip, "-client", ip,
                "-dns-port", "-1", "-grpc-port", "-1", "-log-level", "warn",
                "-hcl", 'check_update_interval = "0s"', "-hcl", "limits { http_max_conns_per_client = 4096 }"]
        args += [a for s in SERVER_IPS for a in ("-retry-join", s)]
        if server:
            # Consul's default Raft timing (raft_multiplier 5): the servers share two cores with 20
            # agents and 20 mirrors here, and the tighter timing lost the leader under that load.
            args += ["-server", "-bootstrap-expect", "3"]
        return Proc(name, args, self.base).start()

    def start(self) -> "Fleet":
        self.servers = [self._agent(f"server-{i}", ip, True) for i, ip in enumerate(SERVER_IPS)]
        wait_until(lambda: ":" in requests.get(f"http://{SERVER_IPS[0]}:8500/v1/status/leader", timeout=2).json(),
                   90, "a leader among the fleet's servers")
        self.agents = [self._agent(f"host-{i:02d}", agent_ip(i), False) for i in range(self.n)]
        for i in range(self.n):
            wait_until(lambda i=i: ":" in requests.get(f"http://{agent_ip(i)}:8500/v1/status/leader", timeout=2).json(),
                       90, f"agent {i} joined")
        return self

    def stores(self, i: int) -> Stores:
        if i not in self._stores:
            self._stores[i] = Stores.connect(f"{agent_ip(i)}:8500")
        return self._stores[i]

    # --- the proxies ---------------------------------------------------------------------
    def follow(self, wait: float = WAIT, max_stale: Optional[float] = MAX_STALE) -> None:
        """One proxy per agent, each a process of its own (as each host's proxy-reloader is):
        a CatalogMirror that reports when each instance is admitted there and when it leaves.
        CLOCK_MONOTONIC is one clock for every process, so its times compare with ours."""
        for i in range(self.n):
            seen, gone = {}, {}
            self.seen.append(seen)
            self.gone_seen.append(gone)
            proc = subprocess.Popen([sys.executable, "-m", "testbed.consul_fleet", f"{agent_ip(i)}:8500", str(wait),
                                     "leader" if max_stale is None else str(max_stale)],
                                    cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
            self.followers.append(proc)
            ready = threading.Event()
            threading.Thread(target=self._read, args=(proc, seen, gone, ready), daemon=True).start()
            self.ready.append(ready)
        for r in self.ready:
            assert r.wait(300), "a proxy's mirror never read the catalog"

    def _read(self, proc, seen: dict, gone: dict, ready: threading.Event) -> None:
        for line in proc.stdout:
            what, *rest = line.split()
            if what == "ready":
                ready.set()
            elif what == "answers":
                self._answers[proc.pid] = int(rest[0])
            else:
                iid, at = rest[0], float(rest[1])
                with self.lock:
                    (seen if what == "seen" else gone).setdefault(iid, at)

    def admitted(self, i: int) -> Dict[str, set]:
        """What proxy i has admitted now, per service (from its reports)."""
        with self.lock:
            out: Dict[str, set] = {}
            for iid in set(self.seen[i]) - set(self.gone_seen[i]):
                out.setdefault(iid.split(":")[1], set()).add(iid)
            return out

    # --- registrations, as each host's registrator makes them --------------------------------
    @staticmethod
    def instance(host: int, service: str, n: int) -> Instance:
        return Instance(id=f"host-{host:02d}:{service}:{n}", service=service, address=agent_ip(host), port=20000 + n,
                        version="v1", container_id=f"c{host}-{service}-{n}", container_name=f"{service}-{n}",
                        image="demo:v1", registered_by=f"registrator@host-{host:02d}")

    def populate(self, services: int, per_service: int) -> Dict[str, tuple]:
        """services x per_service admitted instances spread over every host, registered by one
        thread per host; {instance id: (host, instance)}."""
        plan: Dict[int, List[Instance]] = {h: [] for h in range(self.n)}
        live = {}
        for s in range(services):
            for k in range(per_service):
                host = (s * per_service + k) % self.n
                inst = self.instance(host, f"svc{s:03d}", k)
                plan[host].append(inst)
                live[inst.id] = (host, inst)
        workers = [threading.Thread(target=lambda h=h: [self.register(h, i) for i in plan[h]]) for h in plan]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return live

    def register(self, host: int, inst: Instance) -> float:
        stores = self.stores(host)
        stores.instances.register(inst)
        stores.instances.apply_gate(inst, True, "9/9 passed (simulated)")
        return time.monotonic()

    def cpu_seconds(self) -> float:
        """CPU time the three servers have used (user + system)."""
        return sum(self.cpu_seconds_each())

    def cpu_seconds_each(self) -> List[float]:
        """CPU time each server has used (user + system), in server order."""
        out = []
        for p in self.servers:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / 100.0)
        return out

    def rss_mb(self) -> List[float]:
        out = []
        for p in self.servers:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        return out

    def answers(self) -> int:
        """Blocking-query answers the proxies' mirrors have received (each one a catalog read the
        servers made: a change, or a wait that ran out); each reports its count every second."""
        return sum(self._answers.values())

    def stop(self) -> None:
        for proc in self.followers:
            proc.terminate()
        for proc in self.followers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_all(self.agents)       # each client agent leaves the cluster, side by side
        stop_all(self.servers)


def churn(fleet: Fleet, live: Dict[str, tuple], rate: float, seconds: float,
          rng: Optional[random.Random] = None) -> List[tuple]:
    """Replace one live instance by a new one on a random host `rate` times a second for `seconds`:
    [(new instance id, registered at, old instance id, deregistered at)]."""
    rng = rng or random.Random(7)
    changes, serial = [], 100000
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        old_id = rng.choice(sorted(live))
        old_host, old_inst = live.pop(old_id)
        fleet.stores(old_host).instances.deregister(old_id)
        gone_at = time.monotonic()
        serial += 1
        host = rng.randrange(fleet.n)
        inst = Fleet.instance(host, old_inst.service, serial)
        at = fleet.register(host, inst)
        live[inst.id] = (host, inst)
        changes.append((inst.id, at, old_id, gone_at))
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    return changes


def follow_one(address: str, wait: float, max_stale: Optional[float]) -> None:
    """A proxy's mirror: prints `ready`, then `seen ID T` / `gone ID T` as instances are
    admitted or leave, and `answers N` every second."""
    admitted_now: Dict[str, set] = {}
    out_lock, change_lock = threading.Lock(), threading.Lock()

    def emit(text: str) -> None:
        with out_lock:
            sys.stdout.write(text)
            sys.stdout.flush()

    def changed() -> None:
        with change_lock:
            now = time.monotonic()
            lines = []
            for service, (instances, _) in mirror.take().items():
                admitted = {ri.instance.id for ri in instances or () if ri.admitted}
                before = admitted_now.get(service, set())
                lines += [f"seen {iid} {now}\n" for iid in admitted - before]
                lines += [f"gone {iid} {now}\n" for iid in before - admitted]
                admitted_now[service] = admitted
            if lines:
                emit("".join(lines))
    mirror = CatalogMirror(address, None, lambda: None, wait=wait, max_stale=max_stale)
    mirror.on_change = changed
    mirror.start()
    mirror.ready.wait()
    changed()
    emit("ready\n")
    while True:
        time.sleep(1)
        emit(f"answers {mirror.answers}\n")


if __name__ == "__main__":
    follow_one(sys.argv[1], float(sys.argv[2]), None if sys.argv[3] == "leader" else float(sys.argv[3]))
