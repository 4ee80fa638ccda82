"""The whole stack as real processes, for end-to-end tests and benchmarks.

registrator, gatekeeper and proxy-reloader run against a given Consul server, nginx on its own
prefix and port; demo containers are started with `docker run` and labels only.
"""
from __future__ import annotations

from catalog.kv_layout import GATEKEEPER
from catalog.model import RegisteredInstance
from catalog.stores import Stores
from testbed.processes import NginxServer, Proc, get_json, python_module, wait_until

E2E_LABEL = "proxystack.e2e"
TEST_LABEL = "proxystack.test"


class Stack:
    def __init__(self, consul, base, docker_client, session: str, listen_port: int = 18000,
                 drain_seconds: float = 3.0, service: str = "demo", gatekeeper_args=(), mode: str = "dynamic",
                 proxy_args=(), metrics_ports=()):
        self.consul, self.base, self.docker = consul, base, docker_client
        self.session, self.listen_port, self.service, self.mode = session, listen_port, service, mode
        self.stores = Stores.connect(consul.address, token=consul.management_token, timeout=5, max_wait=5)
        self.nginx = NginxServer(base / "nginx", f"127.0.0.1:{listen_port}")
        self.containers = {}
        self.services = {service}            # every service this stack deployed: its KV goes at stop()
        # metrics_ports: (registrator's, gatekeeper's) --metrics ports; proxy-reloader's are on --admin
        self.metrics_ports = tuple(metrics_ports)
        self.registrator = self._registrator()
        gatekeeper_metrics = ("--metrics", f"127.0.0.1:{metrics_ports[1]}") if metrics_ports else ()
        self.gatekeeper = Proc("gatekeeper", python_module(
            "gatekeeper", "--consul", consul.address, "--consul-token-file", consul.token_file("gatekeeper"), "run", "--drain-seconds", str(drain_seconds), "--wait", "5",
            "--test-timeout", "60", "--test-label", f"{TEST_LABEL}={self.session}", *gatekeeper_metrics,
            *gatekeeper_args), base)
        self.reloader = Proc("proxy-reloader", python_module(
            "proxy_reloader", "--consul", consul.address, "--consul-token-file", consul.token_file("proxy-reloader"),
            "--nginx-prefix", str(self.nginx.prefix), "--listen", self.nginx.listen,
            "--admin", f"127.0.0.1:{listen_port + 1000}", "--mode", mode, "--report-check", *proxy_args), base)

    def _registrator(self):
        return Proc("registrator", python_module(
            "registrator", "--consul", self.consul.address, "--consul-token-file",
            self.consul.token_file("registrator"), "--hostname", "e2e",
            "--filter-label", f"{E2E_LABEL}={self.session}", "--resync", "30",
            *(("--metrics", f"127.0.0.1:{self.metrics_ports[0]}") if self.metrics_ports else ())), self.base)

    def start(self):
        """Start every part; when one fails to start, stop what did (nothing outlives a failed
        fixture) and raise."""
        try:
            return self._start()
        except BaseException:
            try:
                self.stop()
            except Exception:            # the start's own error is the one to see
                pass
            raise

    def _start(self):
        Proc("render-once", python_module("proxy_reloader", "--consul", self.consul.address, "--consul-token-file",
                                          self.consul.token_file("proxy-reloader"), "--nginx-prefix",
                                          str(self.nginx.prefix), "--listen", self.nginx.listen, "--once",
                                          "--mode", self.mode),
             self.base).start().popen.wait(30)
        self.nginx.start()
        for p in (self.registrator, self.gatekeeper, self.reloader):
            p.start()
        return self

    def stop(self):
        self.remove_containers()          # while registrator still runs, so it deregisters them
        for p in (self.reloader, self.gatekeeper, self.registrator):
            p.stop()
        self.nginx.stop()
        # test containers a killed gatekeeper left behind carry this stack's label too
        for c in self.docker.containers.list(all=True, filters={"label": f"{TEST_LABEL}={self.session}"},
                                                ignore_removed=True):
            try:
                c.remove(force=True)
            except Exception:
                pass
        self.forget()

    @property
    def proxy_id(self) -> str:
        return f"proxy-reloader:{self.nginx.listen}"

    def forget(self) -> None:
        """Take out of the shared Consul what this stack wrote, even where a daemon was killed
        and could not: its proxy's registration and reports, its services' policies, history,
        analysis and scaling records, and every gatekeeper record of its own instances (their
        ids carry its containers' names). Another module's `wait` or `status` never sees them."""
        self.stores.instances.deregister(self.proxy_id)
        self.stores.proxies.forget(self.proxy_id)
        for service in self.services:
            self.stores.forget_service(service)
        own = f"e2e:e2e-{self.session}-"
        for key in self.stores.consul.kv_keys(GATEKEEPER):
            if own in key:
                self.stores.consul.kv_delete(key)

    def deploy(self, name, image, environment=None, restart_policy=None, **labels):
        """`docker run -d -P` with labels only (and `-e` for the demo's switches, `--restart`), as an
        operator would."""
        base = {"SERVICE_NAME": self.service, "gatekeeper.tests": "demo-test:latest", "proxy.path": "/demo/",
                TEST_LABEL: self.session, E2E_LABEL: self.session}
        c = self.docker.containers.run(image, detach=True, name=f"e2e-{self.session}-{name}", publish_all_ports=True,
                                       labels={**base, **labels}, environment=environment or {},
                                       restart_policy=restart_policy)
        self.containers[name] = c
        self.services.add(labels.get("SERVICE_NAME", self.service))
        return c

    def proxy_status(self, path="/status"):
        """proxy-reloader's status endpoint."""
        return get_json(self.listen_port + 1000, path)[1]

    def get(self, path="/demo/1", headers=None):
        return get_json(self.listen_port, path, headers)

    def served_version(self, headers=None):
        status, body = self.get(headers=headers)
        return body.get("version") if status == 200 else None

    def proxy_serves(self, targets, role: str = "stable", service: str = "") -> bool:
        """Whether the proxy's workers route `role` of the service to exactly these instances
        (containers, or RegisteredInstances as Consul lists them): what a load that counts
        failures waits for, not Consul's word that they are admitted. proxy-reloader's status
        shows a route only once nginx confirmed it."""
        service = service or self.service
        status, route = get_json(self.listen_port + 1000, f"/services/{service}")
        pool = (route.get(role) or {}) if status == 200 else {}
        want = set()
        for t in targets:
            ri = t if isinstance(t, RegisteredInstance) else self.instance(t, service)
            if ri is None:
                return False
            want.add(f"{ri.instance.address}:{ri.instance.port}")
        return bool(want) and set(pool.get("servers") or ()) == want

    def instance(self, container, service: str = ""):
        for ri in self.stores.instances.of(service or self.service):
            if ri.instance.container_id == container.id:
                return ri
        return None

    def remove_containers(self):
        for c in self.containers.values():
            try:
                c.remove(force=True)
            except Exception:
                pass
        self.containers.clear()

    def gatekeeper_cli(self, *args, token: str = "operator"):
        """Run the gatekeeper CLI against this stack's Consul with a part's token (the operator's
        unless told): (exit code, stdout, stderr)."""
        import subprocess
        res = subprocess.run(python_module("gatekeeper", "--consul", self.consul.address, "--consul-token-file",
                                           self.consul.token_file(token), *args),
                             capture_output=True, text=True, timeout=120)
        return res.returncode, res.stdout, res.stderr

    def wait(self, predicate, timeout, what):
        """wait_until, with the daemons' logs in the failure message."""
        try:
            return wait_until(predicate, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in (self.registrator, self.gatekeeper, self.reloader))
