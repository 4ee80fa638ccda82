"""proxy-reloader: keep nginx's config in step with Consul.

    proxy-reloader --nginx-prefix DIR [--listen 127.0.0.1:8000] [--once]
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

import requests

from catalog.consul_store import ConsulStore, read_token

from .nginx import Nginx, NginxError
from .runner import Runner, RunnerOptions


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
    p.add_argument("--once", action="store_true", help="render and apply once, then exit")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.min_wait <= args.max_wait:
        p.error("need 0 < --min-wait <= --max-wait")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s proxy-reloader %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        store = ConsulStore(args.consul, token=read_token(args.consul_token_file))
        nginx = Nginx(args.nginx_prefix, args.nginx_binary)
    except (ValueError, OSError) as exc:
        print(f"proxy-reloader: {exc}", file=sys.stderr)
        return 2
    runner = Runner(store, nginx, RunnerOptions(listen=args.listen, min_wait=args.min_wait,
                                                max_wait=args.max_wait, workers=args.workers))
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
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    logging.info("proxy-reloader: Consul %s -> nginx %s (listen %s)", args.consul, nginx.conf, args.listen)
    runner.dirty.set()                 # render at start-up, whatever the watches say
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
