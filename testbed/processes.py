"""Real components for the tests: a Consul server, nginx, and the stack's own daemons.

Each is started as a real process with its own ports and folders and stopped by its pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import requests

ROOT = Path(__file__).resolve().parents[1]


def find_binary(name: str, extra: List[Path] = ()) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in list(extra) + [ROOT / ".stack" / "bin", Path("/usr/sbin")]:
        if (d / name).exists():
            return str(d / name)
    raise RuntimeError(f"{name} not found: run `bash scripts/install.sh` (make test does) to install it")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:        # the thing is still coming up
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


class Proc:
    """One child process, logging to a file, stopped by its pid."""

    def __init__(self, name: str, args: List[str], log_dir: Path, env: Optional[dict] = None,
                 cwd: Optional[Path] = None):
        """`cwd`: where it runs (the checkout by default); `python -m` imports from there first."""
        self.name, self.args, self.log_path = name, args, log_dir / f"{name}.log"
        self.env, self.cwd = env, cwd or ROOT
        self.popen: Optional[subprocess.Popen] = None

    def start(self) -> "Proc":
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                      env={**os.environ, **(self.env or {})}, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def signal(self) -> None:
        """SIGTERM without waiting (see stop_all)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def stop_all(procs: List[Proc], timeout: float = 15.0) -> None:
    """Stop processes side by side: all of them signalled first, then each waited for (killed
    past `timeout`), so twenty agents that each take seconds to leave take seconds, not minutes."""
    for p in procs:
        p.signal()
    deadline = time.monotonic() + timeout
    for p in procs:
        if p.popen is None:
            continue
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)


class ConsulServer:
    """A single-node Consul server with a data folder, on ports apart from the demo stack's,
    with ACLs on (default deny) and one token per part, as the stack runs it.

    With `tls`, hardened as production runs it: gossip encrypted with a key of its own, TLS on
    RPC with verify_incoming/verify_outgoing and the server's host name checked, and the API on
    HTTPS only (at `address`, https://...), with a CA of its own made by scripts/certs.sh
    (`ca_file`; clients trust it through CONSUL_CACERT, `tls_env`)."""

    def __init__(self, base: Path, http_port: int = 18500, port_base: int = 18300, tls: bool = False):
        self.data = base / "consul-data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.tokens = base / "tokens"
        self.http_port = http_port
        self.tls = tls
        self.address = f"{'https://' if tls else ''}127.0.0.1:{http_port}"
        self.ca_file = str(base / "tls" / "ca" / "ca.pem")
        hardened = self._harden(base) if tls else ["-http-port", str(http_port)]
        self.proc = Proc("consul", [
            find_binary("consul"), "agent", "-server", "-bootstrap-expect", "1", "-node", "proxystack-test",
            "-data-dir", str(self.data), "-bind", "127.0.0.1", "-client", "127.0.0.1", *hardened,
            "-dns-port", "-1", "-grpc-port", "-1",
            "-server-port", str(port_base), "-serf-lan-port", str(port_base + 1),
            "-serf-wan-port", str(port_base + 2), "-log-level", "warn", "-ui",
            # Sync a check's output to the catalog at once, not every 5 minutes, so the gate's
            # summary is visible as soon as it is written (the stack's own Consul does the same).
            "-hcl", 'check_update_interval = "0s"',
            # proxy-reloader keeps one blocking query per service: more than Consul's default 200.
            "-hcl", "limits { http_max_conns_per_client = 4096 }",
            "-hcl", 'acl { enabled = true, default_policy = "deny", enable_token_persistence = true }',
        ], base)

    def _harden(self, base: Path) -> List[str]:
        ca, peer = base / "tls" / "ca", base / "tls" / "server"
        certs = str(ROOT / "scripts" / "certs.sh")
        subprocess.run(["bash", certs, "ca", str(ca)], check=True, capture_output=True)
        subprocess.run(["bash", certs, "peer", str(ca), str(peer), "DNS:server.dc1.consul,DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        key = subprocess.run([find_binary("consul"), "keygen"], check=True, capture_output=True, text=True).stdout.strip()
        return ["-http-port", "-1", "-hcl", f"ports {{ https = {self.http_port} }}", "-encrypt", key,
                "-hcl", f'ca_file = "{ca}/ca.pem"', "-hcl", f'cert_file = "{peer}/cert.pem"',
                "-hcl", f'key_file = "{peer}/key.pem"', "-hcl", "verify_incoming_rpc = true",
                "-hcl", "verify_outgoing = true", "-hcl", "verify_server_hostname = true"]

    @property
    def tls_env(self) -> dict:
        """What a client needs to trust this server's HTTPS: nothing without TLS."""
        return {"CONSUL_CACERT": self.ca_file} if self.tls else {}

    def start(self) -> "ConsulServer":
        """Started, a leader elected and the ACL tokens made; on any failure the process is
        stopped again (a Consul left on these ports would answer the next run in its place)."""
        from catalog.acl_setup import setup
        self.proc.start()
        url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}/v1/status/leader"
        verify = self.ca_file if self.tls else True
        try:
            wait_until(lambda: ":" in requests.get(url, timeout=2, verify=verify).json(), 60, "Consul leader election")
            wait_until(lambda: setup(self.address, self.tokens), 30, "ACL bootstrap and tokens")
        except BaseException:
            self.proc.stop()
            raise
        return self

    def token_file(self, part: str) -> str:
        """registrator, gatekeeper, proxy-reloader, operator, or bootstrap (management)."""
        return str(self.tokens / f"{part}.token")

    @property
    def management_token(self) -> str:
        return (self.tokens / "bootstrap.token").read_text().strip()

    @property
    def headers(self) -> dict:
        return {"X-Consul-Token": self.management_token}

    def stop(self) -> None:
        self.proc.stop()


class PrometheusServer:
    """Prometheus with the stack's configuration (monitoring.config), its targets kept by
    monitoring.targets from the given Consul with Prometheus's own token, as the stack runs it."""

    def __init__(self, base: Path, consul: "ConsulServer", port: int, interval: str = "1s"):
        from monitoring.config import render
        self.port, self.address = port, f"127.0.0.1:{port}"
        self.dir = base / "prometheus"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.config, self.targets = self.dir / "prometheus.yml", self.dir / "targets.json"
        self.config.write_text(render(str(self.targets), interval=interval))
        self.watcher = Proc("prometheus-targets", python_module(
            "monitoring.targets", "--consul", consul.address, "--consul-token-file", consul.token_file("prometheus"),
            "--out", str(self.targets)), base)
        self.proc = Proc("prometheus", [
            find_binary("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.address}", "--log.level=warn"], base)

    def start(self) -> "PrometheusServer":
        """Start both; when either fails to come up, stop both and raise."""
        try:
            self.watcher.start()
            wait_until(lambda: self.targets.exists(), 30, "the targets file")
            self.proc.start()
            wait_until(lambda: requests.get(f"http://{self.address}/-/ready", timeout=2).ok, 60, "Prometheus ready")
            time.sleep(0.2)
            if not self.proc.alive():          # the port answered, but not this Prometheus: a leftover holds it
                raise AssertionError(f"Prometheus exited at start; is another one listening on {self.address}? "
                                     f"{self.proc.log()[-500:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def api(self, path: str, **params):
        r = requests.get(f"http://{self.address}/api/v1/{path}", params=params, timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    def query(self, promql: str) -> dict:
        """Instant query -> {frozenset(labels.items()): value}."""
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in self.api("query", query=promql)["result"]}

    def stop(self) -> None:
        self.proc.stop()
        self.watcher.stop()


class NginxServer:
    """nginx under its own prefix; its config is rendered by proxy-reloader --once first."""

    def __init__(self, prefix: Path, listen: str):
        self.prefix, self.listen = prefix, listen
        self.binary = find_binary("nginx")
        (prefix / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    def start(self) -> "NginxServer":
        subprocess.run([self.binary, "-p", str(self.prefix), "-c", str(self.conf)], check=True,
                       capture_output=True, timeout=30)
        wait_until(lambda: (self.prefix / "nginx.pid").exists(), 10, "nginx pid file")
        return self

    def master_pid(self) -> Optional[int]:
        try:
            return int((self.prefix / "nginx.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.master_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGQUIT)
                wait_until(lambda: not pid_alive(pid), 15, "nginx to quit")
            except ProcessLookupError:
                pass
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def python_module(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def get_json(port: int, path: str, headers: Optional[dict] = None, method: str = "GET"):
    """GET (or `method`) http://127.0.0.1:PORT/PATH -> (status, parsed JSON body), error statuses included."""
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
