"""The CD flow on the real stack, median over N releases:

1. build-and-push: `delivery build-and-push demo_service` of a new version into a local registry
   (Debian's docker-registry), unit tests in the build (cached by the builder when the source is
   unchanged, as a CI node would have it), both images pushed;
2. deploy: `delivery deploy` to prod, the cluster's host h2 (scripts/cluster.sh), whose dockerd
   speaks only TLS with client certificates, from the command's start to its exit 0 (pull from
   the registry, run, h2's registrator, integration tests by the gatekeeper leader on h1 or h2,
   promotion, every proxy serving it);
3. what the CD job waits for beyond the proxy: from the first answer of the new version through
   h2's nginx (a probe asks every 2 ms during the deploy) to `deploy`'s exit 0; `wait` polls, so this
   is its polling cost. The version is served before the job is told so, never after (exit 0
   means served);
and the failed requests of a client making a new connection per request throughout.

Each figure is printed beside its goal; --check exits 1 when one is missed.

    .venv/bin/python -m bench.delivery_bench [--runs 5] [--json] [--check]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

from bench.harness import bench_env, command_line, exit_code, goals_table, progress, report, with_check
from testbed.cluster import CONSUL_CA, MACHINE_END, STATE as CLUSTER_STATE, Cluster, host_ip
from testbed.delivery import Registry
from testbed.load import LoadClient
from testbed.processes import ROOT

REGISTRY_PORT, PROD = 18910, "h2"


def cli(*args) -> float:
    t0 = time.monotonic()
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "delivery", *args],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "CONSUL_CACERT": str(CONSUL_CA)})   # the cluster's Consul: HTTPS only
    if res.returncode != 0:
        raise RuntimeError(f"delivery {args[0]} exited {res.returncode}: {res.stderr[-2000:]}")
    return time.monotonic() - t0


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    say = progress(args.json)
    build, deploy, served_to_exit, late = [], [], [], 0
    with bench_env() as env:
        say("starting the cluster (scripts/cluster.sh up 2)")
        cluster = Cluster(2).up()
        registry = Registry(env.base / "registry", REGISTRY_PORT, host=MACHINE_END, ca_dir=CLUSTER_STATE / "certs").start()
        load = LoadClient(host_ip(PROD), 8000, max_seconds=900, max_requests=10**6)
        try:
            for i in range(args.runs + 1):
                version = f"{env.session}r{i}"
                build.append(cli("build-and-push", str(ROOT / "demo_service"), "--registry", registry.address,
                                 "--version", version, "--wheelhouse", str(ROOT / ".stack" / "wheelhouse")))
                probe = FirstServed(cluster, version).start()
                deploy.append(cli("deploy", f"{registry.address}/demo:{version}", "--engine", f"tcp://{host_ip(PROD)}:2376",
                                  "--tls-dir", str(CLUSTER_STATE / "certs" / "client"), "--consul", cluster.consul_address(),
                                  "--consul-token-file", str(CLUSTER_STATE / "tokens" / "operator.token"),
                                  "--label", "proxy.path=/demo/"))          # its containers go with the cluster
                exited = time.monotonic()
                seen = probe.finish()
                if seen is None or seen > exited:
                    late += 1                   # exit 0 before the proxy served the version
                served_to_exit.append(exited - seen if seen is not None else 0.0)
                say(f"release {i}: build-and-push {build[-1]:.2f} s, deploy {deploy[-1]:.2f} s; "
                    f"first served {served_to_exit[-1] * 1000:.0f} ms before exit 0")
                if i == 0:
                    load.start()                # from the first release on, traffic never stops
            load.finish()
        finally:
            registry.stop()
            registry.remove_local_tags(env.client)
            cluster.down()
    # release 0 starts from nothing (first pull, first build of the version layers): left out
    build, deploy, served_to_exit = build[1:], deploy[1:], served_to_exit[1:]
    result = {"build_and_push_s": round(statistics.median(build), 2), "deploy_s": round(statistics.median(deploy), 2),
              "served_to_exit_ms": round(statistics.median(served_to_exit) * 1000, 1), "runs": len(deploy),
              "exit_before_served": late, "requests": load.total, "failed": len(load.failures),
              "all": {"build_and_push_s": [round(x, 2) for x in build], "deploy_s": [round(x, 2) for x in deploy],
                      "served_to_exit_ms": [round(x * 1000) for x in served_to_exit]}}
    n = len(deploy)
    rows = [(f"build-and-push, unit-test layer cached: median s ({n} releases)", result["build_and_push_s"], "", None),
            (f"deploy to h2 (dockerd --tlsverify) through the gate, start to exit 0: median s ({n})", result["deploy_s"], "<= 10",
             result["deploy_s"] <= 10),
            (f"first proxied answer of the new version -> exit 0: median ms ({n})", result["served_to_exit_ms"],
             "<= 250", result["served_to_exit_ms"] <= 250),
            ("releases whose exit 0 came before the proxy served them", late, "0", late == 0),
            (f"failed requests over all releases (of {load.total})", result["failed"], "0", result["failed"] == 0)]
    result["goals"] = [{"measure": m, "figure": f, "goal": g, "met": ok} for m, f, g, ok in rows]
    report(result, args.json, goals_table(rows))
    return exit_code(rows, args.check)


class FirstServed(threading.Thread):
    """Asks prod's proxy every 2 ms and keeps the moment it first answers from `version`."""

    def __init__(self, cluster, version: str):
        super().__init__(daemon=True)
        self.cluster, self.version, self.seen, self.stopping = cluster, version, None, threading.Event()

    def start(self) -> "FirstServed":
        super().start()
        return self

    def run(self) -> None:
        while self.seen is None and not self.stopping.is_set():
            try:
                if self.cluster.get(PROD, timeout=2)[1].get("version") == self.version:
                    self.seen = time.monotonic()
            except OSError:
                pass
            time.sleep(0.002)

    def finish(self, grace: float = 5.0):
        """The moment first served (waiting up to `grace` for it after the deploy returned)."""
        deadline = time.monotonic() + grace
        while self.seen is None and time.monotonic() < deadline:
            time.sleep(0.01)
        self.stopping.set()
        self.join(1)
        return self.seen


if __name__ == "__main__":
    sys.exit(main())
