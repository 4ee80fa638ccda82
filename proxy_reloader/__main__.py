"""proxy-reloader: keep nginx in step with Consul.

dynamic (the default): routes, their settings, instances, gates and weights are pushed to
nginx's Lua router without a reload; nginx reloads only when its own options change.
reload: every change renders the config and reloads nginx (for an nginx without the Lua module).

HTTPS (dynamic mode, --tls-listen): certificates are picked per handshake by SNI from those
pushed with the routes: from a folder (--cert-dir), from Consul (`proxy-reloader cert add`), from
an ACME CA (--acme-directory, HTTP-01, one issuer at a time) and from the stack's local CA
(--local-ca) for routed hosts that have none. `proxy-reloader cert --help` manages the ones in Consul.

nginx's logs (DIR/logs/access.log and error.log): one grown past --log-max-size becomes NAME.1
(NAME.1 becomes NAME.2, ..., at most --log-keep kept) and nginx is told to reopen its logs.
"""
from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from catalog.cli import (EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, add_consul_options,
                         consul_address, consul_refusal, consul_unreachable, exit_code_epilog)
from catalog import schema
from catalog.consul_client import ConsulException, read_token
from catalog.retry import TRANSIENT
from catalog.stores import ProxyStore, Stores
from catalog.stores.proxies import advertised
from catalog.logs import setup_logging
from catalog.metrics import announce, own_metrics, withdraw
from catalog.mirror import CatalogMirror

from . import metrics
from catalog import local_ca
from catalog.signals import stop_on_signals

from . import cert_cli, logfiles
from .acme_issuer import AcmeIssuer
from .certificates import CertificateBook, LocalIssuer, ensure_fallback
from .nginx import Nginx, NginxError
from .push import PushClient, PushError, ensure_secret
from .render import DYNAMIC, RELOAD, Settings
from .runner import Runner, RunnerOptions, render_once
from .served import ServedReports
from .status_server import parse_loopback, serve_status
from .supervisor import NginxChild


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxy-reloader", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + exit_code_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=(DYNAMIC, RELOAD), default=DYNAMIC,
                   help="dynamic: push routes, their settings and instances to nginx's Lua router, "
                        "never reload for a catalog change (needs libnginx-mod-http-lua); reload: reload "
                        "nginx on every change (default %(default)s)")
    add_consul_options(p)
    p.add_argument("--nginx-prefix", required=True, metavar="DIR",
                   help="nginx prefix folder; the config is DIR/nginx.conf")
    p.add_argument("--nginx-binary", default=None, metavar="PATH", help="nginx executable (default: from PATH)")
    p.add_argument("--listen", default="127.0.0.1:8000", metavar="ADDRESS:PORT",
                   help="where the proxy listens (default %(default)s)")
    p.add_argument("--grpc-listen", default="", metavar="ADDRESS:PORT",
                   help="where the proxy takes gRPC calls (HTTP/2 in cleartext) for the services labelled "
                        "proxy.protocol=grpc (default: no gRPC listener)")
    p.add_argument("--tls-listen", default="", metavar="ADDRESS:PORT",
                   help="where the proxy takes HTTPS (TLS 1.2/1.3, HTTP/2), certificates by SNI; dynamic mode "
                        "only (default: no TLS listener)")
    p.add_argument("--cert-dir", default=None, metavar="DIR",
                   help="a folder of certificates to serve: HOST.crt + HOST.key, _wildcard.DOMAIN.crt for "
                        "*.DOMAIN, default.crt; re-read when a file changes")
    p.add_argument("--local-ca", default=None, metavar="DIR",
                   help="the stack's own CA (DIR/root.crt, made when absent): issues a certificate for each "
                        "routed host that has none, written to Consul for every proxy")
    p.add_argument("--local-ca-default", default="", metavar="NAME[,NAME]",
                   help="with --local-ca: issue the default certificate (for clients whose name has no "
                        "certificate) for these host names or addresses, such as localhost,127.0.0.1, "
                        "unless another source has one (default: none, such clients fail the handshake)")
    p.add_argument("--acme-directory", default="", metavar="URL",
                   help="an ACME CA's directory (RFC 8555; Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory): "
                        "certificates for routed hosts by HTTP-01, answered on --listen (port 80 for a public CA); "
                        "one proxy-reloader orders at a time (default: no ACME)")
    p.add_argument("--acme-email", default="", metavar="ADDRESS", help="the ACME account's contact address")
    p.add_argument("--acme-ca-bundle", default=None, metavar="FILE",
                   help="CA certificates to trust for the ACME server's own HTTPS (default: Python requests' bundle, "
                        "or REQUESTS_CA_BUNDLE when set)")
    p.add_argument("--workers", default="2", help="nginx worker_processes (default %(default)s)")
    p.add_argument("--read-timeout", type=float, default=30.0, metavar="S",
                   help="seconds an instance may take to answer before the request is retried on another "
                        "(idempotent requests) or fails; also how long a request sent to a host that just "
                        "died waits (default %(default)s)")
    p.add_argument("--min-wait", type=float, default=None,
                   help="quiescence: seconds without change before applying (default: 0.02 dynamic, 0.1 reload)")
    p.add_argument("--max-wait", type=float, default=None,
                   help="quiescence: longest delay after a change (default: 0.25 dynamic, 1 reload)")
    p.add_argument("--admin", default="127.0.0.1:8001", metavar="ADDRESS:PORT",
                   help="loopback address of the read-only status and metrics endpoint, '' to disable "
                        "(default %(default)s); its /metrics is announced in Consul for Prometheus")
    p.add_argument("--log-max-size", default=logfiles.DEFAULT_MAX_SIZE, metavar="SIZE",
                   help="rotate nginx's access.log and error.log (in the prefix's logs/ folder) when one grows "
                        "past SIZE: bytes, or k, m, g; 0 leaves them to something else, such as logrotate "
                        "(default %(default)s)")
    p.add_argument("--log-keep", type=int, default=logfiles.DEFAULT_KEEP, metavar="N",
                   help="rotated files kept per log, NAME.1 the newest (default %(default)s)")
    p.add_argument("--table-size", default="64m", metavar="SIZE",
                   help="nginx's shared memory for the pushed table (dynamic mode): bytes, or k, m, g; "
                        "about 1 KiB per service of 8 instances (default %(default)s)")
    p.add_argument("--metrics-size", default="16m", metavar="SIZE",
                   help="nginx's shared memory for the per-request metrics (dynamic mode): about 2.5 KiB "
                        "per service and version (default %(default)s)")
    p.add_argument("--exec", dest="exec_nginx", action="store_true", help="run nginx as a child and supervise it")
    p.add_argument("--report-check", action="store_true",
                   help="register the proxy in Consul with a check that fails while a config is refused")
    p.add_argument("--once", action="store_true", help="render and apply once, then exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    return p


ZONE_MIN, ZONE_MAX = 64 * 1024, 4 * 1024 ** 3       # an nginx shared memory zone's size, bytes


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    consul_address(args)
    dynamic = args.mode == DYNAMIC
    args.min_wait = args.min_wait if args.min_wait is not None else (0.02 if dynamic else 0.1)
    args.max_wait = args.max_wait if args.max_wait is not None else (0.25 if dynamic else 1.0)
    if not 0 < args.min_wait <= args.max_wait:
        p.error("need 0 < --min-wait <= --max-wait")
    if not 0 < args.read_timeout <= 3600:
        p.error(f"--read-timeout must be more than 0 and at most 3600 seconds, got {args.read_timeout:g}")
    if (args.tls_listen or args.cert_dir or args.local_ca) and not dynamic:
        p.error("--tls-listen, --cert-dir and --local-ca need --mode dynamic (certificates are picked by nginx's Lua side)")
    if args.acme_directory and not dynamic:
        p.error("--acme-directory needs --mode dynamic")
    if args.acme_ca_bundle and not Path(args.acme_ca_bundle).is_file():
        p.error(f"--acme-ca-bundle {args.acme_ca_bundle} is not a file")
    if args.local_ca_default and not args.local_ca:
        p.error("--local-ca-default needs --local-ca")
    if args.cert_dir and not Path(args.cert_dir).is_dir():
        p.error(f"--cert-dir {args.cert_dir} is not a folder")
    try:
        args.log_max_size = logfiles.parse_size(args.log_max_size)
    except ValueError as exc:
        p.error(f"--log-max-size: {exc}")
    for option in ("table_size", "metrics_size"):
        flag = "--" + option.replace("_", "-")
        try:
            size = logfiles.parse_size(getattr(args, option))
        except ValueError as exc:
            p.error(f"{flag}: {exc}")
        if not ZONE_MIN <= size <= ZONE_MAX:
            p.error(f"{flag} {getattr(args, option)}: a shared memory zone of 64k to 4g")
        setattr(args, option, f"{size // 1024}k")
    if not 1 <= args.log_keep <= logfiles.MAX_KEEP:
        p.error(f"--log-keep must be from 1 to {logfiles.MAX_KEEP} rotated files, got {args.log_keep}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cert"]:
        return cert_cli.main(argv[1:])
    args = parse_args(argv)
    setup_logging("proxy-reloader", args.verbose)
    try:
        token = read_token(args.consul_token_file)
        stores = Stores.connect(args.consul, token=token)
        nginx = Nginx(args.nginx_prefix, args.nginx_binary, listen=args.listen)
        settings = Settings(str(nginx.prefix), args.listen, args.workers, args.mode, nginx.modules_path(),
                            read_timeout=f"{args.read_timeout:g}s", grpc_listen=args.grpc_listen,
                            tls_listen=args.tls_listen, table_size=args.table_size, metrics_size=args.metrics_size)
        push = None
        if args.mode == DYNAMIC:
            lua = Path(settings.modules) / "ngx_http_lua_module.so"
            if not lua.exists():
                raise ValueError(f"--mode dynamic needs nginx's Lua module, and {lua} does not exist: install "
                                 "libnginx-mod-http-lua and lua-cjson (scripts/install.sh nginx does), "
                                 "or run with --mode reload")
            push = PushClient(settings.socket, ensure_secret(settings.secret))
            if args.tls_listen:
                ensure_fallback(settings.fallback_cert, settings.fallback_key)
        certificates = CertificateBook(args.cert_dir)
        issuer = None
        if args.local_ca:
            ca, made = local_ca.ensure(args.local_ca)
            logging.info("local CA %s: %s", "made" if made else "reused", Path(args.local_ca) / "root.crt")
            issuer = LocalIssuer(ca, stores.certificates,
                                 default_names=[n.strip() for n in args.local_ca_default.split(",") if n.strip()])
    except (ValueError, OSError) as exc:
        print(f"proxy-reloader: {exc}", file=sys.stderr)
        return EXIT_USAGE
    refused = schema.check_at_start(stores.consul, "proxy-reloader")
    if refused is not None:
        return refused
    reporter, proxy_id = None, proxy_identity(args.listen)
    if args.report_check:
        reporter = stores.proxies.self_report("proxy-reloader", proxy_id, args.listen)
    options = RunnerOptions(listen=args.listen, min_wait=args.min_wait, max_wait=args.max_wait,
                            workers=args.workers, mode=args.mode, modules=settings.modules,
                            read_timeout=settings.read_timeout, grpc_listen=args.grpc_listen,
                            tls_listen=args.tls_listen)
    if args.once or args.exec_nginx:
        try:
            changed = render_once(stores, nginx, settings, push, certificates)
        except (NginxError, PushError) as exc:
            if args.once:
                print(f"proxy-reloader: nginx refused: {exc}", file=sys.stderr)
                return EXIT_FAILED
            logging.warning("first render failed (%s); nginx starts with what is on disk", exc)
            changed = False
        except TRANSIENT as exc:                # Consul unreachable, or refusing (no leader yet, a token)
            why = (consul_refusal(args.consul, exc) if isinstance(exc, ConsulException)
                   else consul_unreachable(args.consul, exc))
            if args.once:
                print(f"proxy-reloader: {why}", file=sys.stderr)
                return EXIT_UNREACHABLE
            logging.warning("first render: %s; nginx starts with what is on disk", why)
            changed = False
        except OSError as exc:                  # the prefix: not writable, a disk full
            if args.once:
                print(f"proxy-reloader: {exc}", file=sys.stderr)
                return EXIT_FAILED
            # The config and table on disk are the last ones written: nginx serves them, and the
            # runner reports the write and tries it again until it works.
            logging.error("first render: could not write nginx's files (%s); nginx starts with what is on disk", exc)
            changed = False
        if args.once:
            print(f"config {'written' if changed else 'unchanged'}: {nginx.conf}")
            return EXIT_OK
    mirror = CatalogMirror(args.consul, token, on_change=lambda: runner.dirty.set())
    acme = None
    if args.acme_directory:
        acme = AcmeIssuer(stores.consul, args.acme_directory, args.acme_email, args.acme_ca_bundle,
                          probe=args.listen, identity=proxy_id).start()
    runner = Runner(mirror, nginx, options, reporter, push, certificates, issuer, acme)
    metrics.count_watch_errors(mirror)
    metrics.report_certificates(certificates)
    if args.report_check:
        runner.served = ServedReports(lambda service, served: stores.proxies.report(proxy_id, service, served))
        runner.served.start()
    if args.admin:
        try:
            serve_status(args.admin, runner.status, own_metrics, push.metrics if push else None)
        except (ValueError, OSError) as exc:
            print(f"proxy-reloader: status endpoint: {exc}", file=sys.stderr)
            return EXIT_USAGE
    announced = None
    if args.admin:
        host, port = parse_loopback(args.admin)
        announced = announce(stores.proxies, f"{host}:{port}", "proxy-reloader", args.listen)
    child = None
    if args.exec_nginx:
        if nginx.current() is None:
            print(f"proxy-reloader: no config at {nginx.conf} to start nginx with", file=sys.stderr)
            return EXIT_FAILED
        child = NginxChild(nginx)
        child.start()
    rotation = logfiles.LogRotation(nginx, args.log_max_size, args.log_keep).start() if args.log_max_size else None
    stop_on_signals(runner.stop)
    logging.info("proxy-reloader: Consul %s -> nginx %s (%s mode, listen %s, status %s)", args.consul, nginx.conf,
                 args.mode, args.listen, args.admin or "off")
    try:
        runner.run()
    finally:
        if rotation:
            rotation.stop()
        if acme:
            acme.stop()
        if child:
            child.stop()
        if args.report_check:
            runner.served.stop()
            _withdraw(stores.proxies, proxy_id)
        withdraw(stores.proxies, announced)
    return EXIT_OK


def proxy_identity(listen: str) -> str:
    """How this proxy is known in Consul (its registration, what it reports serving, which
    `gatekeeper wait` counts): its listener, and on a wildcard one (0.0.0.0:80 is the same on
    every host) this machine's name too."""
    if advertised(listen.rpartition(":")[0]):
        return f"proxy-reloader:{listen}"
    return f"proxy-reloader:{socket.gethostname()}:{listen}"


def _withdraw(proxies: ProxyStore, proxy_id: str) -> None:
    """A proxy that stops no longer counts for `gatekeeper wait`: its service and reports go."""
    try:
        proxies.withdraw(proxy_id)
        proxies.forget(proxy_id)
    except Exception as exc:                 # Consul away: the stale entry names this proxy
        logging.warning("could not withdraw %s from Consul: %s", proxy_id, exc)


if __name__ == "__main__":
    sys.exit(main())
