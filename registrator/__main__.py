"""registrator: register Docker containers' published ports in Consul, each behind a closed gate."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from catalog import schema
from catalog.cli import EXIT_OK, EXIT_USAGE, add_consul_options, consul_address, exit_code_epilog
from catalog.consul_client import TokenFile, read_token
from catalog.stores import Stores
from catalog.metrics import announce, metrics_address, serve_metrics, withdraw
from catalog.logs import setup_logging
from catalog.signals import stop_on_signals

from .actions import ActionRunner
from .bridge import Bridge
from .docker_source import DockerSource
from .gates import GateMirror
from .markers import MarkerMirror
from .runner import Runner, RunnerOptions
from .translate import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="registrator", description=__doc__.strip(), epilog=exit_code_epilog())
    add_consul_options(p)
    p.add_argument("--docker", default=None, metavar="URL",
                   help="Docker Engine URL (default: DOCKER_HOST, else the local socket)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address advertised for published ports (default %(default)s)")
    p.add_argument("--hostname", default=socket.gethostname(), help="host part of instance ids (default: this host's name)")
    p.add_argument("--explicit", action="store_true",
                   help="register only containers with SERVICE_NAME (others are skipped with a log line)")
    p.add_argument("--internal", action="store_true",
                   help="register the container's own address and exposed ports instead of published ones")
    p.add_argument("--filter-label", default="", metavar="KEY=VALUE", help="register only containers with this label")
    p.add_argument("--exclude-label", action="append", default=[], metavar="KEY",
                   help="skip containers that carry this label (repeatable)")
    p.add_argument("--id", default="", help="identity stored with each registration (default: registrator@HOSTNAME)")
    p.add_argument("--resync", type=float, default=60.0, metavar="S", help="seconds between full resyncs (default %(default)s)")
    p.add_argument("--forget-after", type=float, default=600.0, metavar="S",
                   help="seconds a gone container's rejection record is kept (default %(default)s)")
    p.add_argument("--cleanup-on-exit", action="store_true", help="deregister everything on SIGTERM")
    p.add_argument("--metrics", default="", type=metrics_address, metavar="HOST:PORT",
                   help="serve Prometheus metrics on this loopback address and announce them in Consul "
                        "(default: off)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    consul_address(args)
    if args.filter_label and "=" not in args.filter_label:
        p.error(f"--filter-label must be KEY=VALUE, got {args.filter_label!r}")
    if args.resync <= 0:
        p.error("--resync must be a positive number of seconds")
    if args.forget_after < 0:
        p.error("--forget-after must be zero or more seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging("registrator", args.verbose)
    settings = Settings(hostname=args.hostname, address=args.address, explicit=args.explicit,
                        filter_label=args.filter_label, exclude_labels=tuple(args.exclude_label),
                        internal=args.internal,
                        registered_by=args.id or f"registrator@{args.hostname}")
    try:
        stores = Stores.connect(args.consul, token=read_token(args.consul_token_file))
        docker = DockerSource(args.docker)
        if args.metrics:
            serve_metrics(args.metrics)
    except (ValueError, OSError) as exc:
        print(f"registrator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    refused = schema.check_at_start(stores.consul, "registrator")
    if refused is not None:
        return refused
    announced = announce(stores.proxies, args.metrics, "registrator", settings.registered_by) if args.metrics else None
    runner = Runner(Bridge(stores.instances, stores.rejections, docker, settings, forget_after=args.forget_after), docker,
                    RunnerOptions(resync_every=args.resync, cleanup_on_exit=args.cleanup_on_exit))
    runner.token_file = TokenFile(stores.consul, args.consul_token_file or os.environ.get("CONSUL_HTTP_TOKEN_FILE"))
    runner.followers = [GateMirror(stores.instances, stores.node_records, settings.registered_by,
                                   runner.stopping).start(),
                        ActionRunner(stores.instances, stores.node_records, docker.carry_out, settings.registered_by,
                                     runner.stopping).start(),
                        MarkerMirror(stores.instances, stores.node_records, docker.write_marker, settings.registered_by,
                                     runner.stopping).start()]
    stop_on_signals(runner.stop)
    logging.info("registrator %s: Consul %s, address %s", settings.registered_by, args.consul, args.address)
    try:
        runner.run()
    finally:
        withdraw(stores.proxies, announced)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
