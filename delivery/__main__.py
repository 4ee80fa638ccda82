"""delivery: build, push and deploy a service, with the gate deciding what serves.

  delivery build-and-push SOURCE --registry HOST:PORT [--version V] [--service NAME]
      builds SOURCE/Dockerfile (its unit tests run in the build) and SOURCE/Dockerfile.test,
      tags them REGISTRY/SERVICE:V and REGISTRY/SERVICE-test:V (V: the git commit), pushes both
  delivery deploy IMAGE --engine URL [--tls-dir DIR] --consul HOST:PORT [--service NAME]
      on the engine: pulls IMAGE and its test image, runs it with registrator's and gatekeeper's
      labels, then waits for the gate; a version that fails is removed, the old one serves on

Engines: unix:///var/run/docker.sock, ssh://USER@HOST, or tcp://HOST:2376 with --tls-dir (or
DOCKER_CERT_PATH) holding ca.pem, cert.pem, key.pem. Plain tcp:// without TLS is refused.

Exit codes as every stack command (deploy: 0 admitted and served by every proxy; 1 a build, its
unit tests, a push or the integration tests failed; 2 also when the container name is taken;
4 deploy timed out waiting for the gate).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Tuple

import docker.errors
import requests

from catalog.cli import (EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE, JsonAwareParser,
                         add_consul_options, consul_address, consul_refusal, consul_unreachable, emit_error,
                         exit_code_epilog)
from catalog.images import image_name
from catalog.consul_client import ConsulException, read_token
from catalog.stores import Stores
from catalog.errors import StackError

from .build import build_and_push, git_version
from .deploy import WAIT_FAILED, WAIT_OK, Deployment, deploy
from .engine import connect

ROOT = Path(__file__).resolve().parent.parent


def default_base_image() -> str:
    recorded = ROOT / ".stack" / "base-image"
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    return recorded.read_text().strip() if recorded.is_file() else "python:3.11-slim"


def key_value(item: str) -> tuple:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = JsonAwareParser(prog="delivery", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + exit_code_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def engine_options(c):
        c.add_argument("--engine", help="Docker Engine: unix://, ssh://USER@HOST or tcp://HOST:2376 (default DOCKER_HOST, else the local socket)")
        c.add_argument("--tls-dir", help="folder with ca.pem, cert.pem, key.pem for a tcp:// engine (default DOCKER_CERT_PATH)")
        c.add_argument("--json", action="store_true", help="progress on stderr, one JSON result on stdout")

    b = sub.add_parser("build-and-push", help="build, unit-test, tag and push a service and its test image")
    b.add_argument("source", type=Path, help="folder with Dockerfile and Dockerfile.test")
    b.add_argument("--registry", required=True, help="HOST:PORT of the registry, no scheme")
    b.add_argument("--service", help="service name (default: the source folder's name up to '_')")
    b.add_argument("--version", help="image tag (default: the git commit, -dirty with local changes)")
    b.add_argument("--base-image", help="BASE_IMAGE build argument (default: BASE_IMAGE, else the image "
                                        "recorded in .stack/base-image, else python:3.11-slim)")
    b.add_argument("--wheelhouse", type=Path, help="folder of wheels copied into the context as wheels/")
    b.add_argument("--build-arg", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="extra build argument (repeatable)")
    b.add_argument("--no-push", action="store_true", help="build and tag only")
    engine_options(b)

    d = sub.add_parser("deploy", help="run a version on an engine and wait for the gate")
    d.add_argument("image", help="REGISTRY/SERVICE:VERSION as pushed by build-and-push")
    d.add_argument("--service", help="service name (default: the image's name)")
    d.add_argument("--tests-image", help="integration-test image (default REGISTRY/SERVICE-test:VERSION)")
    d.add_argument("--version", help="version label (default: the image tag)")
    d.add_argument("--name", help="container name (default SERVICE-VERSION)")
    d.add_argument("--label", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="extra container label (repeatable)")
    add_consul_options(d, what=" of the target's stack (a token with read access is enough)")
    d.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for the gate (default %(default)s)")
    d.add_argument("--keep-failed", action="store_true", help="leave a failed version's container for inspection")
    engine_options(d)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "deploy":
        consul_address(args)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(f"{args.command}: {line}", file=out, flush=True)

    def fail(code: int, message: str) -> int:
        return emit_error(args.json, message, code, prog=f"delivery {args.command}")

    try:
        if args.command == "build-and-push":
            source = args.source.resolve()
            if not source.is_dir():
                return fail(EXIT_USAGE, f"{args.source} is not a folder")
            service = args.service or source.name.split("_", 1)[0]
            version = args.version or git_version(source)
            client = connect(args.engine, args.tls_dir)
            release = build_and_push(client, source, registry=args.registry, service=service, version=version,
                                     base_image=args.base_image or default_base_image(),
                                     wheelhouse=args.wheelhouse, build_args=dict(args.build_arg),
                                     push=not args.no_push, say=say)
            say(f"done: {release.image} and {release.tests_image}")
            if args.json:
                print(json.dumps({"ok": True, "exit": 0, **release.to_dict()}))
            return EXIT_OK
        service = args.service or image_name(args.image)
        d = Deployment.of(service, args.image, args.tests_image, args.version, args.name,
                          labels=dict(args.label), timeout=args.timeout, keep_failed=args.keep_failed)
        stores = Stores.connect(args.consul, token=read_token(args.consul_token_file))
        try:
            stores.consul.leader()      # fail early when Consul is unreachable or refuses us
        except (requests.ConnectionError, requests.Timeout) as exc:
            return fail(EXIT_UNREACHABLE, consul_unreachable(args.consul, exc))
        except ConsulException as exc:
            return fail(EXIT_UNREACHABLE, consul_refusal(args.consul, exc))
        client = connect(args.engine, args.tls_dir)
        outcome = deploy(client, stores, d, say=say)
        code = {WAIT_OK: EXIT_OK, WAIT_FAILED: EXIT_FAILED}.get(outcome, EXIT_TIMEOUT)
        if args.json:
            print(json.dumps({"ok": code == 0, "exit": code, "service": d.service, "version": d.version,
                              "image": d.image, "tests_image": d.tests_image, "container": d.name}))
        return code
    except StackError as exc:
        return fail(exc.exit_code, str(exc))
    except ValueError as exc:
        return fail(EXIT_USAGE, str(exc))
    except (requests.ConnectionError, requests.Timeout) as exc:
        # build-and-push speaks to the engine only; deploy to Consul and the engine
        where = f"Consul at {args.consul} or the Docker Engine" if getattr(args, "consul", None) else "the Docker Engine"
        return fail(EXIT_UNREACHABLE, f"{where} stopped answering: {exc.__class__.__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a CD job needs a message and an exit code, not a traceback
        known = outside_failure(exc)
        if known is None:
            raise
        return fail(*known)


def outside_failure(exc: Exception) -> Optional[Tuple[int, str]]:
    """(exit code, message) for a failure outside this program: the engine or Consul refusing
    (docker's APIError is an OSError too, through requests: it is checked first), the source
    folder or the file system; None for anything else (a bug: its traceback is wanted)."""
    if isinstance(exc, (docker.errors.DockerException, ConsulException, requests.RequestException)) \
            or type(exc).__module__.startswith(("consul", "docker")):
        return EXIT_UNREACHABLE, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, shutil.Error):           # copying SOURCE: an unreadable file, a dangling link
        return EXIT_FAILED, f"could not copy the source folder: {copy_errors(exc)}"
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return None


def copy_errors(exc: shutil.Error) -> str:
    """shutil.copytree's error: a list of (source, destination, why), said for the first."""
    found = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    if not found:
        return str(exc)
    src, _, why = found[0]
    return f"{src}: {why}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
