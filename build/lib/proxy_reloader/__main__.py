"""proxy-reloader: keep nginx's config in step with Consul.

    proxy-reloader --nginx-prefix DIR [--listen 127.0.0.1:8000] [--admin 127.0.0.1:8001] [--exec] [--once]
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

import requests

from catalog.consul_store import ConsulStore, read_token
from catalog.logs import setup_logging

from .nginx import Nginx, NginxError
from .runner import Runner, RunnerOptions
from .status_server import serve_status
from .supervisor import NginxChild


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="proxy-reloader", description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--consul", default="127.0.0.1:8500", help="Consul agent HTTP address")
    p.add_argument("--consul-token-file", help="file holding the Consul ACL token (else CONSUL_HTTP_TOKEN)")
    p.add_argument("--nginx-prefix", required=True, help="nginx prefix folder; the config is PREFIX/nginx.conf")
    p.add_argument("--nginx-binary", default=None, help="nginx executable (default: from PATH)")
    p.add_argument("--listen", default="127.0.0.1:8000", help="address:port the proxy listens on")
    p.add_argument("--workers", default="2", help="nginx worker_processes")
    p.add_argument("--min-wait", type=float, default=0.1, help="quiescence: seconds without change before rendering")
    p.add_argument("--max-wait", type=float, default=1.0, help="quiescence: longest delay after a change")
    p.add_argument("--admin", default="127.0.0.1:8001", help="loopback address of the read-only status endpoint ('' to disable)")
    p.add_argument("--exec", dest="exec_nginx", action="store_true", help="run nginx as a child and supervise it")
    p.add_argument("--report-check", action="store_true",
                   help="register the proxy in Consul with a check that fails while a config is refused")
    p.add_argument("--once", action="store_true", help="render and apply once, then exit")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.min_wait <= args.max_wait:
        p.error("need 0 < --min-wait <= --max-wait")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging("proxy-reloader", args.verbose)
    try:
        store = ConsulStore(args.consul, token=read_token(args.consul_token_file))
        nginx = Nginx(args.nginx_prefix, args.nginx_binary, listen=args.listen)
    except (ValueError, OSError) as exc:
        print(f"proxy-reloader: {exc}", file=sys.stderr)
        return 2
    reporter = None
    if args.report_check:
        reporter = store.self_reporter("proxy-reloader", f"proxy-reloader:{args.listen}", args.listen)
    runner = Runner(store, nginx, RunnerOptions(listen=args.listen, min_wait=args.min_wait,
                                                max_wait=args.max_wait, workers=args.workers), reporter)
    if args.once:
        try:
            changed = runner.render_once()
        except NginxError as exc:
            print(f"proxy-reloader: nginx rejected the config: {exc}", file=sys.stderr)
            return 1
        except (requests.ConnectionError, requests.Timeout):
            print(f"proxy-reloader: Consul at {args.consul} is unreachable", file=sys.stderr)
            return 3
        print(f"config {'written' if changed else 'unchanged'}: {nginx.conf}")
        return 0
    if args.admin:
        try:
            serve_status(args.admin, runner.status)
        except (ValueError, OSError) as exc:
            print(f"proxy-reloader: status endpoint: {exc}", file=sys.stderr)
            return 2
    child = None
    if args.exec_nginx:
        try:
            runner.render_once()
        except (NginxError, requests.ConnectionError, requests.Timeout) as exc:
            logging.warning("first render failed (%s); nginx starts with what is on disk", exc)
        if nginx.current() is None:
            print(f"proxy-reloader: no config at {nginx.conf} to start nginx with", file=sys.stderr)
            return 1
        child = NginxChild(nginx)
        child.start()
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    logging.info("proxy-reloader: Consul %s -> nginx %s (listen %s, status %s)", args.consul, nginx.conf,
                 args.listen, args.admin or "off")
    runner.dirty.set()                 # render at start-up, whatever the watches say
    try:
        runner.run()
    finally:
        if child:
            child.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
