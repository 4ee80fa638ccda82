"""The multi-host cluster of scripts/cluster.sh as tests and benchmarks see it: its Consul
servers, its hosts (each a network namespace with an agent, an engine, registrator and a proxy),
what every proxy routes, and the faults the script can cause."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

import docker
import requests

from catalog.consul_client import Tls
from catalog.kv_layout import LEADER
from catalog.stores import Stores
from testbed.load import KeepAliveLoad
from testbed.processes import ROOT, wait_until

SCRIPT = ROOT / "scripts" / "cluster.sh"
STATE = ROOT / ".cluster"
NET = "10.210.0"
MACHINE_END = f"{NET}.1"          # this machine's address on every host's link (the registry's, say)
SERVERS = (11, 12, 13)
API_PORT = 8501                   # every agent's API, HTTPS only, its certificate signed by CONSUL_CA
CONSUL_CA = STATE / "tls" / "ca" / "ca.pem"
DEMO_LABELS = {"SERVICE_NAME": "demo", "gatekeeper.tests": "demo-test:latest", "proxystack.demo": "1"}
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def host_ip(host: str) -> str:
    return f"{NET}.2{host[1:]}"


def enter_netns(host: str) -> None:
    """Move the calling thread (only it) into the host's network namespace."""
    fd = os.open(f"/var/run/netns/psc-{host}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {host}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_host(host: str, fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) on a thread inside the host's namespace (its loopback: the agent, the admin port)."""
    out: dict = {}

    def target():
        try:
            enter_netns(host)
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:            # handed to the caller
            out["error"] = exc
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def consul_get(url: str, **kwargs) -> requests.Response:
    """A GET to a cluster agent's HTTPS API, trusting the cluster's CA."""
    return requests.get(url, verify=str(CONSUL_CA), timeout=kwargs.pop("timeout", 2), **kwargs)


def routed_servers(service: str) -> Optional[FrozenSet[str]]:
    """The backends this namespace's proxy routes `service` to (None: no route)."""
    r = requests.get(f"http://127.0.0.1:8001/services/{service}", timeout=2)
    if r.status_code != 200:
        return None
    data = r.json()
    out = set()
    for group in ("stable", "canary"):
        out.update((data.get(group) or {}).get("servers", []))
    return frozenset(out)


class RouteLog(threading.Thread):
    """Polls one proxy's route for a service every `every` s from inside its host and keeps each
    change with its time: how long a change took to reach that proxy, and whether it flapped."""

    def __init__(self, host: str, service: str, every: float = 0.05):
        super().__init__(name=f"routes-{host}", daemon=True)
        self.host, self.service, self.every = host, service, every
        self.changes: List[Tuple[float, Optional[FrozenSet[str]]]] = []
        self.errors = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        enter_netns(self.host)
        while not self.stopping.is_set():
            try:
                now = routed_servers(self.service)
            except (requests.RequestException, ValueError):
                self.errors += 1              # the host is down: no change recorded
            else:
                if not self.changes or self.changes[-1][1] != now:
                    self.changes.append((time.monotonic(), now))
            self.stopping.wait(self.every)

    @property
    def current(self) -> Optional[FrozenSet[str]]:
        return self.changes[-1][1] if self.changes else None

    def first_without(self, backends: set, after: float) -> Optional[float]:
        """When, after `after`, the route first held none of `backends`."""
        for t, servers in self.changes:
            if t >= after and not (set(servers or ()) & backends):
                return t
        return None

    def since(self, moment: float) -> List[Tuple[float, Optional[FrozenSet[str]]]]:
        return [c for c in self.changes if c[0] >= moment]

    def stop(self) -> "RouteLog":
        self.stopping.set()
        self.join(5)
        return self


class Cluster:
    def __init__(self, hosts: int = 3):
        self.hosts = [f"h{i}" for i in range(1, hosts + 1)]
        self._docker: Dict[str, docker.DockerClient] = {}

    # --- life cycle ---------------------------------------------------------------------------
    def sh(self, *args: str, timeout: float = 600) -> str:
        r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout

    def up(self) -> "Cluster":
        self.sh("up", str(len(self.hosts)))
        return self

    def down(self) -> None:
        for client in self._docker.values():
            client.close()
        self._docker.clear()
        self.sh("down")

    # --- Consul -------------------------------------------------------------------------------
    def token(self, part: str) -> str:
        return (STATE / "tokens" / f"{part}.token").read_text().strip()

    def server_alive(self, n: int) -> bool:
        f = STATE / "run" / f"consul-s{n}.pid"
        try:
            os.kill(int(f.read_text()), 0)
            return True
        except (OSError, ValueError):
            return False

    def consul_address(self) -> str:
        """The HTTPS address of a live server (only this namespace reaches it)."""
        return f"https://127.0.0.{next(n for n in SERVERS if self.server_alive(n))}:{API_PORT}"

    @property
    def client_env(self) -> dict:
        """The environment for a program of the stack run against the cluster: trusting its CA."""
        return {**os.environ, "CONSUL_CACERT": str(CONSUL_CA)}

    def stores(self, part: str = "bootstrap") -> Stores:
        """The stores on a live server (the management token by default: tests read everything)."""
        return Stores.connect(self.consul_address(), token=self.token(part), tls=Tls(ca=str(CONSUL_CA)))

    def _leaders_named(self) -> Dict[int, Optional[int]]:
        """{live server: the leader it names, None for none}; a server that does not answer is left out."""
        named: Dict[int, Optional[int]] = {}
        for n in SERVERS:
            if not self.server_alive(n):
                continue
            try:
                addr = consul_get(f"https://127.0.0.{n}:{API_PORT}/v1/status/leader").json()
            except (requests.RequestException, ValueError):
                continue
            named[n] = int(addr.split(":")[0].rsplit(".", 1)[1]) if addr else None
        return named

    def leader(self) -> Optional[int]:
        """The number (11-13) of the server that leads, as the first live server to answer sees it."""
        return next((n for n in self._leaders_named().values() if n is not None), None)

    def agreed_leader(self) -> Optional[int]:
        """The leader every live server names (one server's answer may be stale: a server
        rejoining after a kill can call an election and move the leadership)."""
        named = self._leaders_named()
        alive = sum(1 for n in SERVERS if self.server_alive(n))
        leaders = set(named.values())
        return leaders.pop() if len(named) == alive and len(leaders) == 1 else None

    def node_health(self, host: str) -> str:
        checks = self.stores().consul.node_checks(host)
        return next((c["Status"] for c in checks if c["CheckID"] == "serfHealth"), "missing")

    def instances(self, service: str = "demo"):
        return self.stores().instances.of(service)

    # --- hosts --------------------------------------------------------------------------------
    def docker(self, host: str) -> docker.DockerClient:
        if host not in self._docker:
            self._docker[host] = docker.DockerClient(base_url=f"unix:///run/psc-{host}/docker.sock", timeout=30)
        return self._docker[host]

    def run_demo(self, host: str, name: str, image: str = "demo:v1", env: Optional[dict] = None,
                 command=None, restart: str = "", **labels):
        return self.docker(host).containers.run(
            image, command, name=name, detach=True, publish_all_ports=True, environment=env or {},
            labels={**DEMO_LABELS, **labels}, restart_policy={"Name": restart} if restart else None)

    def backend(self, host: str, container) -> str:
        container.reload()
        return f"{host_ip(host)}:{container.ports['8080/tcp'][0]['HostPort']}"

    def get(self, host: str, path: str = "/demo/1", timeout: float = 5) -> Tuple[int, dict]:
        r = requests.get(f"http://{host_ip(host)}:8000{path}", timeout=timeout)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, {}

    def routes(self, host: str, service: str = "demo") -> Optional[FrozenSet[str]]:
        return in_host(host, routed_servers, service)

    def wait_routed(self, backends: set, hosts=None, service: str = "demo", timeout: float = 60,
                    exactly: bool = True) -> None:
        for h in hosts or self.hosts:
            def ok(h=h):
                now = set(self.routes(h, service) or ())
                return now == backends if exactly else backends <= now
            wait_until(ok, timeout, f"proxy on {h} to route {service} to {sorted(backends)}")

    def logs(self, name: str, lines: int = 40) -> str:
        f = STATE / "logs" / f"{name}.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) if f.exists() else "(no log)"

    def wait(self, cond, timeout: float, what: str, logs=()) -> None:
        try:
            wait_until(cond, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(f"--- {n}\n{self.logs(n)}" for n in logs)) from None


def remove_demo_containers(cluster: Cluster, host: str) -> None:
    for c in cluster.docker(host).containers.list(all=True, filters={"label": "proxystack.demo"}):
        c.remove(force=True)


def gatekeeper_leader(cluster: Cluster) -> str:
    """The host whose gatekeeper holds the leader lock ('' when none does)."""
    item = cluster.stores().consul.kv_entry(LEADER)
    if not item or not item.get("Session"):
        return ""
    return (item.get("Value") or b"").decode().split("@")[-1].strip()


def wait_for_leader(cluster: Cluster, timeout: float = 60, not_: Optional[int] = None) -> int:
    """The leading server's number, once there is one (other than `not_`, a server just killed)."""
    return wait_until(lambda: (lambda n: n if n not in (None, not_) else None)(cluster.leader()),
                      timeout, "a Consul leader" + (f" other than server {not_}" if not_ else ""))


def wait_for_stable_leader(cluster: Cluster, hold: float = 3.0, timeout: float = 90) -> int:
    """The leader every live server has named for `hold` seconds running."""
    seen = {"leader": None, "since": 0.0}

    def stable():
        leader, now = cluster.agreed_leader(), time.monotonic()
        if leader is None or leader != seen["leader"]:
            seen.update(leader=leader, since=now)
            return None
        return leader if now - seen["since"] >= hold else None
    return wait_until(stable, timeout, f"every Consul server naming one leader for {hold:g} s")


def server_pid(n: int) -> int:
    return int((STATE / "run" / f"consul-s{n}.pid").read_text())


def kill_server(cluster: Cluster, n: int) -> float:
    """SIGKILL server n; the moment of the kill (time.monotonic), taken before `stop-server`
    waits for the process to go and removes its pid file."""
    os.kill(server_pid(n), signal.SIGKILL)
    killed_at = time.monotonic()
    cluster.sh("stop-server", str(n))
    return killed_at


def pid_file(name: str) -> Path:
    return STATE / "run" / f"{name}.pid"


def keepalive_loads(hosts, connections: int = 3, rate: float = 20.0, max_seconds: float = 900) -> dict:
    """Kept-alive clients through each host's proxy: {host: KeepAliveLoad}."""
    return {h: KeepAliveLoad(host_ip(h), 8000, connections=connections, rate=rate, max_seconds=max_seconds).start()
            for h in hosts}


class NodeFailure(threading.Thread):
    """Started before a host goes: `at` becomes the moment the servers mark its node failed
    (serfHealth critical), or stays None if they do not within `limit` seconds."""

    def __init__(self, cluster: Cluster, host: str, limit: float = 90.0):
        super().__init__(name=f"failure-{host}", daemon=True)
        self.cluster, self.host, self.limit = cluster, host, limit
        self.at: Optional[float] = None

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while self.at is None and time.monotonic() < deadline:
            try:
                if self.cluster.node_health(self.host) == "critical":
                    self.at = time.monotonic()
            except Exception:               # a server restarting: ask again
                pass
            time.sleep(0.05)
