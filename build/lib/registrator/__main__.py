"""registrator: register Docker containers' published ports in Consul.

    registrator [--consul 127.0.0.1:8500] [--address 127.0.0.1] [--explicit] ...
"""
from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

from catalog.consul_store import ConsulStore, read_token
from catalog.logs import setup_logging

from .bridge import Bridge
from .docker_source import DockerSource
from .runner import Runner, RunnerOptions
from .translate import Settings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="registrator", description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--consul", default="127.0.0.1:8500", help="Consul agent HTTP address")
    p.add_argument("--consul-token-file", help="file holding the Consul ACL token (else CONSUL_HTTP_TOKEN)")
    p.add_argument("--docker", default=None, help="Docker Engine URL (default: DOCKER_HOST or the local socket)")
    p.add_argument("--address", default="127.0.0.1", help="address advertised for published ports")
    p.add_argument("--hostname", default=socket.gethostname(), help="host part of instance ids")
    p.add_argument("--explicit", action="store_true", help="register only containers with SERVICE_NAME")
    p.add_argument("--filter-label", default="", metavar="KEY=VALUE", help="register only containers with this label")
    p.add_argument("--exclude-label", action="append", default=[], metavar="KEY",
                   help="skip containers that carry this label (repeatable)")
    p.add_argument("--id", default="", help="identity stored with each registration (default: registrator@HOSTNAME)")
    p.add_argument("--resync", type=float, default=60.0, help="seconds between full resyncs")
    p.add_argument("--cleanup-on-exit", action="store_true", help="deregister everything on SIGTERM")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.filter_label and "=" not in args.filter_label:
        p.error(f"--filter-label must be KEY=VALUE, got {args.filter_label!r}")
    if args.resync <= 0:
        p.error("--resync must be a positive number of seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging("registrator", args.verbose)
    settings = Settings(hostname=args.hostname, address=args.address, explicit=args.explicit,
                        filter_label=args.filter_label, exclude_labels=tuple(args.exclude_label),
                        registered_by=args.id or f"registrator@{args.hostname}")
    try:
        store = ConsulStore(args.consul, token=read_token(args.consul_token_file))
        docker = DockerSource(args.docker)
    except (ValueError, OSError) as exc:
        print(f"registrator: {exc}", file=sys.stderr)
        return 2
    runner = Runner(Bridge(store, docker, settings), docker,
                    RunnerOptions(resync_every=args.resync, cleanup_on_exit=args.cleanup_on_exit))
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    logging.info("registrator %s: Consul %s, address %s", settings.registered_by, args.consul, args.address)
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
