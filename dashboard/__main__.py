"""dashboard: the services, their gates and rollouts at a glance, live (a web page)."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from urllib.parse import urlsplit

from aiohttp import web

from catalog.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, consul_address, exit_code_epilog
from catalog.consul_client import parse_address
from catalog.logs import setup_logging
from gatekeeper.prometheus import shown

from .server import Config, make_app

log = logging.getLogger("dashboard")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dashboard", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A web dashboard of the stack: every service, its gates, versions and rollouts, live.\n"
                    "Log in with a Consul ACL token; the pages show what that token may read.",
        epilog="Example:\n  dashboard --listen 127.0.0.1:8005 --prometheus http://127.0.0.1:9090\n\n"
               + exit_code_epilog())
    p.add_argument("--listen", default="127.0.0.1:8005", metavar="HOST:PORT",
                   help="address to serve the dashboard on (default: 127.0.0.1:8005)")
    p.add_argument("--consul", metavar="HOST:PORT",
                   help="Consul agent HTTP address (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
    p.add_argument("--prometheus", metavar="URL",
                   help="Prometheus that scrapes the proxies, for req/s, success rate and p99 (optional)")
    p.add_argument("--allow-actions", action="store_true",
                   help="offer promote, weight, abort and rollback to tokens that may write routing policies "
                        "(default: read-only for everyone)")
    p.add_argument("--session-minutes", type=float, default=60.0, metavar="N",
                   help="a login ends after N minutes without anyone using it; a page's own live "
                        "updates do not count (default: 60)")
    p.add_argument("--public-url", metavar="URL", default="",
                   help="the address people open, when a proxy stands in front (https://dash.example.com): "
                        "forms must come from it, and https makes the session cookie Secure")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def loopback(host: str) -> bool:
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("dashboard", args.verbose)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        print(f"dashboard: --listen {args.listen!r} is not HOST:PORT (for example 127.0.0.1:8005)", file=sys.stderr)
        return EXIT_USAGE
    try:
        parse_address(consul_address(args))
    except ValueError as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.session_minutes <= 0:
        print("dashboard: --session-minutes must be more than 0", file=sys.stderr)
        return EXIT_USAGE
    if args.public_url and (urlsplit(args.public_url).scheme not in ("http", "https") or not urlsplit(args.public_url).netloc):
        print(f"dashboard: --public-url {args.public_url!r} is not http(s)://HOST[:PORT]", file=sys.stderr)
        return EXIT_USAGE
    config = Config(args.consul, args.prometheus, args.allow_actions, idle_seconds=args.session_minutes * 60,
                    public_url=args.public_url)
    if not loopback(host) and urlsplit(args.public_url or "").scheme != "https":
        log.warning("dashboard on %s, off this machine, over plain HTTP: the Consul tokens pasted at its login "
                    "cross the network readable; put it behind a TLS proxy and give --public-url https://...",
                    args.listen)
    log.info("dashboard on http://%s (Consul %s, Prometheus %s, actions %s)", args.listen, args.consul,
             shown(args.prometheus) if args.prometheus else "none", "allowed" if args.allow_actions else "off")
    try:
        # open pages hold event streams: at a stop they are cut after a second, not waited for
        web.run_app(make_app(config), host=host, port=int(port), print=None, access_log=None, shutdown_timeout=1.0)
    except OSError as exc:
        print(f"dashboard: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
