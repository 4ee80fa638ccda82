"""gatekeeper: test-gated admission and promotion of service instances.

  gatekeeper run                 the daemon: test every new instance, promote what passes
  gatekeeper status [SERVICE]    versions, instances, verdicts, and what the proxy serves
  gatekeeper promote SERVICE     make the canary the stable version
  gatekeeper wait SERVICE --version V [--timeout S]
                                 for CD jobs: exit 0 admitted, 1 tests failed, 2 timed out

Exit codes: 0 done, 1 refused (the message says why), 2 bad usage, 3 Consul unreachable.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

import requests

from catalog.consul_store import ConsulStore, read_token
from catalog.validation import InvalidValue, check

from .promotion import PromotionError
from .status import collect, render_text

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatekeeper", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--consul", default="127.0.0.1:8500", help="Consul agent HTTP address (default %(default)s)")
    p.add_argument("--consul-token-file", help="file holding the Consul ACL token (else CONSUL_HTTP_TOKEN)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the daemon", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--parallel", type=int, default=2, help="instances tested at once")
    run.add_argument("--test-timeout", type=float, default=120.0, help="seconds a test run may take")
    run.add_argument("--test-memory", default="256m", help="memory limit of a test container")
    run.add_argument("--test-cpus", type=float, default=1.0, help="CPU limit of a test container")
    run.add_argument("--test-label", action="append", default=[], metavar="KEY=VALUE",
                     help="extra label on every test container (repeatable)")
    run.add_argument("--drain-seconds", type=float, default=10.0,
                     help="after a promotion, seconds before old instances' containers are stopped")
    run.add_argument("--keep-old", action="store_true", help="never stop old instances' containers")
    run.add_argument("--wait", type=float, default=30.0, help="blocking query wait, seconds")
    run.add_argument("-v", "--verbose", action="store_true")

    st = sub.add_parser("status", help="show services, instances, verdicts and routing")
    st.add_argument("service", nargs="?")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    pr = sub.add_parser("promote", help="make the canary of SERVICE its stable version")
    pr.add_argument("service")
    pr.add_argument("--json", action="store_true", help="machine-readable output")

    wt = sub.add_parser("wait", help="wait until a version is admitted (exit 0), fails (1) or times out (2)")
    wt.add_argument("service")
    wt.add_argument("--version", required=True)
    wt.add_argument("--timeout", type=float, default=300.0, help="seconds (default %(default)s)")
    return p


def cmd_wait(args, store) -> int:
    from .wait import wait_for_version
    check("service", args.service)
    check("version", args.version)
    return wait_for_version(store, args.service, args.version, args.timeout,
                            say=lambda line: print(line, flush=True))


def cmd_run(args, store) -> int:
    import docker

    from .daemon import Daemon
    from .gate import Gate
    from .promotion import Promoter
    from .tester import DockerTester, RunLimits

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s gatekeeper %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    client = docker.from_env(timeout=30)
    limits = RunLimits(timeout=args.test_timeout, memory=args.test_memory, cpus=args.test_cpus)
    promoter = Promoter(store, client, drain_seconds=args.drain_seconds, stop_old=not args.keep_old)
    labels = {}
    for item in args.test_label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--test-label must be KEY=VALUE, got {item!r}")
        labels[key] = value
    gate = Gate(store, DockerTester(client, limits, labels), parallel=args.parallel, on_admitted=promoter.admitted)
    daemon = Daemon(store, gate, wait=args.wait)
    def on_signal(*_):
        # The main thread usually sits in a blocking query; leave it now rather than after
        # the wait. A test cut short keeps its "testing" verdict and is rerun on restart.
        daemon.stop()
        raise SystemExit(EXIT_OK)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.info("gatekeeper watching Consul at %s", args.consul)
    try:
        daemon.run()
    finally:
        gate.shutdown()
    return EXIT_OK


def cmd_status(args, store) -> int:
    if args.service:
        check("service", args.service)
        if args.service not in store.service_names():
            print(f"gatekeeper: unknown service {args.service!r}; known: "
                  f"{', '.join(store.all_instances()) or 'none'}", file=sys.stderr)
            return EXIT_REFUSED
    data = collect(store, args.service)
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render_text(data), end="" if not args.json else "\n")
    return EXIT_OK


def cmd_promote(args, store) -> int:
    from .promotion import promote
    check("service", args.service)
    policy = promote(store, args.service)
    if args.json:
        print(policy.to_json())
    else:
        print(f"{args.service}: {policy.stable} is now stable (previous: {policy.previous or '-'}); "
              f"the proxy switches within a second")
    return EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = ConsulStore(args.consul, token=read_token(args.consul_token_file))
        return {"run": cmd_run, "status": cmd_status, "promote": cmd_promote, "wait": cmd_wait}[args.command](args, store)
    except InvalidValue as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PromotionError as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (requests.ConnectionError, requests.Timeout) as exc:
        print(f"gatekeeper: Consul at {args.consul} is unreachable ({type(exc).__name__}); "
              "is the stack running? (make demo starts it)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ValueError as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
