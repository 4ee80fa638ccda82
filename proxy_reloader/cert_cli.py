"""proxy-reloader cert: the certificates every proxy serves from Consul.

  cert add HOST --cert FILE --key FILE   check the certificate (PEM, key matches, not expired,
                                         names cover HOST) and store it; every proxy serves it
                                         within a second, without a reload
  cert list [--json]                     each certificate: name, SANs, issuer, expiry, source
  cert remove HOST                       stop serving it (the next source's, if any, takes over)
  cert renew HOST                        ask the ACME issuer (proxy-reloader --acme-directory) for a
                                         new certificate for HOST now

HOST is a host name, *.DOMAIN for the names one level under DOMAIN, or default (for clients whose
name no other certificate covers). Certificates in a --cert-dir folder are not listed here; a
proxy's /status shows every certificate it serves, from every source.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import requests

from catalog.certificates import CertificateRefused, check_name, parse
from catalog.cli import (EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, add_consul_options, consul_address,
                         consul_refusal, consul_unreachable, emit_error, exit_code_epilog)
from catalog.consul_client import ConsulClient, ConsulException, read_token
from catalog.kv_layout import ACME_RENEW
from catalog.stores.certificates import CertificateStore, checked


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxy-reloader cert", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + exit_code_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_consul_options(p)
    sub = p.add_subparsers(dest="action", required=True, metavar="{add,list,remove,renew}")
    add = sub.add_parser("add", help="check a certificate and its key, and serve it on every proxy")
    add.add_argument("host", help="host name, *.DOMAIN, or default")
    add.add_argument("--cert", required=True, metavar="FILE", help="PEM certificate, then any intermediates")
    add.add_argument("--key", required=True, metavar="FILE", help="its PEM private key (unencrypted)")
    add_consul_options(add, subcommand=True)
    listing = sub.add_parser("list", help="the certificates in Consul: name, SANs, issuer, expiry, source")
    listing.add_argument("--json", action="store_true", help="print one JSON object: name -> details")
    add_consul_options(listing, subcommand=True)
    remove = sub.add_parser("remove", help="stop serving a certificate from Consul")
    remove.add_argument("host", help="host name, *.DOMAIN, or default")
    add_consul_options(remove, subcommand=True)
    renew = sub.add_parser("renew", help="ask the ACME issuer for a new certificate for a host now")
    renew.add_argument("host", help="a host name (not a wildcard: HTTP-01 cannot validate one); a host served by "
                                    "the operator's certificate is not ordered")
    add_consul_options(renew, subcommand=True)
    return p


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertificateRefused(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None


PROG = "proxy-reloader cert"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    consul_address(args)
    as_json = getattr(args, "json", False)
    try:
        store = CertificateStore(ConsulClient(args.consul, token=read_token(args.consul_token_file)))
        if args.action == "add":
            cert = parse(check_name(args.host), _read(args.cert, "certificate"), _read(args.key, "key"), "operator")
            store.put(cert)
            s = cert.summary()
            print(f"certificate {cert.name} stored: {', '.join(cert.sans)}; issuer {cert.issuer}; "
                  f"valid until {s['not_after']} ({s['days_left']:g} days). Every proxy serves it within a second.")
        elif args.action == "list":
            return _list(store, args.json)
        elif args.action == "renew":
            name = check_name(args.host)
            if name == "default" or name.startswith("*."):
                raise CertificateRefused(f"{name}: ACME issues for host names only (HTTP-01 cannot validate a wildcard)")
            store.consul.kv_put(ACME_RENEW + name, str(round(time.time(), 3)))
            print(f"renewal of {name} asked for: the ACME issuer (a proxy-reloader with --acme-directory) orders a "
                  "new certificate within seconds; proxy-reloader cert list shows it when it is in")
        else:
            if not store.remove(args.host):
                return emit_error(False, f"no certificate {args.host} in Consul (proxy-reloader cert list shows "
                                         "what there is)", EXIT_FAILED, PROG)
            print(f"certificate {args.host} removed; proxies stop serving it within a second")
        return EXIT_OK
    except CertificateRefused as exc:
        return emit_error(as_json, f"refused, nothing stored: {exc}", EXIT_USAGE, PROG)
    except ValueError as exc:               # the token file, --consul, the CONSUL_* TLS variables
        return emit_error(as_json, f"{exc}; nothing changed", EXIT_USAGE, PROG)
    except (requests.ConnectionError, requests.Timeout) as exc:
        return emit_error(as_json, consul_unreachable(args.consul, exc), EXIT_UNREACHABLE, PROG)
    except ConsulException as exc:
        return emit_error(as_json, consul_refusal(args.consul, exc), EXIT_UNREACHABLE, PROG)


def _list(store: CertificateStore, as_json: bool) -> int:
    out = {}
    for name, entry in sorted(store.all().items()):
        try:
            out[name] = checked(entry).summary()
        except CertificateRefused as exc:
            out[name] = {"name": name, "source": entry.source, "error": str(exc)}
    if as_json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return EXIT_OK
    if not out:
        print("no certificates in Consul (proxy-reloader cert add HOST --cert FILE --key FILE adds one)")
    for name, c in out.items():
        if "error" in c:
            print(f"{name}  [{c['source']}]  NOT SERVED: {c['error']}")
        else:
            print(f"{name}  [{c['source']}]  {', '.join(c['sans'])}  issuer {c['issuer']}  "
                  f"until {c['not_after']} ({c['days_left']:g} days)")
    return EXIT_OK
