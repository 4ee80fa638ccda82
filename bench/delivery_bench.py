"""The CD flow on the real stack, median over N releases:

1. build-and-push: `delivery build-and-push demo_service` of a new version into a local registry
   (Debian's docker-registry), unit tests in the build (cached by the builder when the source is
   unchanged, as a CI node would have it), both images pushed;
2. deploy: `delivery deploy` over TLS with a client certificate, from the command's start to
   its exit 0 (pull from the registry, run, registrator, integration tests, promotion);
3. exit 0 -> first response from the new version through nginx;
and the failed requests of a client making a new connection per request throughout.

    .venv/bin/python -m bench.delivery_bench [--runs 5] [--json]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench.harness import bench_env, command_line, progress, report
from tests.support.delivery import Registry, TlsEngineFront
from tests.support.load import LoadClient
from tests.support.processes import ROOT, wait_until
from tests.support.stack import E2E_LABEL, TEST_LABEL, Stack

PORT, REGISTRY_PORT, TLS_PORT = 18103, 18910, 18377


def cli(*args) -> float:
    t0 = time.monotonic()
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "delivery", *args],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"delivery {args[0]} exited {res.returncode}: {res.stderr[-2000:]}")
    return time.monotonic() - t0


def main(argv=None) -> int:
    p = command_line(__doc__)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    say = progress(args.json)
    build, deploy, to_proxy = [], [], []
    with bench_env() as env:
        registry = Registry(env.base / "registry", REGISTRY_PORT).start()
        tls = TlsEngineFront(env.base / "tls", TLS_PORT).start()
        stack = Stack(env.consul, env.base, env.client, env.session, PORT).start()
        load = LoadClient("127.0.0.1", PORT, max_seconds=900, max_requests=10**6)
        try:
            for i in range(args.runs + 1):
                version = f"{env.session}r{i}"
                build.append(cli("build-and-push", str(ROOT / "demo_service"), "--registry", registry.address,
                                 "--version", version, "--wheelhouse", str(ROOT / ".stack" / "wheelhouse")))
                deploy.append(cli("deploy", f"{registry.address}/demo:{version}", "--engine", tls.url,
                                  "--tls-dir", str(tls.client_dir), "--consul", env.consul.address,
                                  "--consul-token-file", env.consul.token_file("operator"),
                                  "--label", f"{E2E_LABEL}={env.session}", "--label", f"{TEST_LABEL}={env.session}",
                                  "--label", "proxy.path=/demo/"))
                t0 = time.monotonic()
                wait_until(lambda: stack.served_version() == version, 60, f"{version} through the proxy", interval=0.002)
                to_proxy.append(time.monotonic() - t0)
                stack.containers[version] = env.client.containers.get(f"demo-{version}")
                say(f"release {i}: build-and-push {build[-1]:.2f} s, deploy {deploy[-1]:.2f} s, "
                    f"then proxied after {to_proxy[-1] * 1000:.0f} ms")
                if i == 0:
                    load.start()                # from the first release on, traffic never stops
            load.finish()
        finally:
            stack.stop()
            tls.stop()
            registry.stop()
            registry.remove_local_tags(env.client)
    # release 0 starts from nothing (first pull, first build of the version layers): left out
    build, deploy, to_proxy = build[1:], deploy[1:], to_proxy[1:]
    result = {"build_and_push_s": round(statistics.median(build), 2), "deploy_s": round(statistics.median(deploy), 2),
              "exit_to_proxied_ms": round(statistics.median(to_proxy) * 1000, 1), "runs": len(deploy),
              "requests": load.total, "failed": len(load.failures)}
    report(result, args.json,
           f"median of {len(deploy)} releases: build-and-push {result['build_and_push_s']} s, "
           f"deploy (TLS, pull, run, gate) {result['deploy_s']} s, exit 0 -> proxied "
           f"{result['exit_to_proxied_ms']} ms; {result['failed']} of {result['requests']} requests failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
