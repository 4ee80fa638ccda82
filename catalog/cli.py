"""What every command-line tool of the stack shares: exit codes, Consul options, error output.

One exit-code table for gatekeeper, delivery, registrator and proxy-reloader:

  0  done (for `wait` and `deploy`: admitted and served)
  1  refused or failed: the message says why (unknown service, no canary, tests failed, ...)
  2  bad input: an invalid value or option (the message names it and the rule)
  3  Consul, a Docker Engine or a registry is unreachable or refuses the request
  4  timed out

With `--json`, every outcome prints one JSON object on stdout, errors included:
`{"ok": false, "error": "...", "exit": N}`; progress and messages for people go to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn, Optional

import requests

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "refused or failed (the message says why)",
    EXIT_USAGE: "bad input (the message names the value and the rule)",
    EXIT_UNREACHABLE: "Consul, a Docker Engine or a registry is unreachable or refuses the request",
    EXIT_TIMEOUT: "timed out",
}

TOKEN_HELP = ("file holding the Consul ACL token (default: CONSUL_HTTP_TOKEN_FILE, else the token in "
              "CONSUL_HTTP_TOKEN)")


def exit_code_epilog() -> str:
    return "Exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


DEFAULT_CONSUL = "127.0.0.1:8500"


def add_consul_options(parser: argparse.ArgumentParser, subcommand: bool = False, what: str = "") -> None:
    """--consul and --consul-token-file, the same for every tool. On a subcommand they are
    accepted after the command name too (`gatekeeper status --consul H:P`) without hiding a
    value given before it. `consul_address` resolves the default."""
    keep = {"default": argparse.SUPPRESS} if subcommand else {"default": None}
    parser.add_argument("--consul", metavar="HOST:PORT",
                        help=f"Consul agent HTTP address{what} (default: CONSUL_HTTP_ADDR, else {DEFAULT_CONSUL})",
                        **keep)
    parser.add_argument("--consul-token-file", metavar="FILE", help=TOKEN_HELP, **keep)


def consul_address(args: argparse.Namespace) -> str:
    """The --consul value, else CONSUL_HTTP_ADDR (as Consul's own CLI reads it), else the default."""
    args.consul = getattr(args, "consul", None) or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_CONSUL
    return args.consul


def consul_refusal(address: str, exc: Exception) -> str:
    """A Consul refusal in words, with what to do when it is the token."""
    text = str(exc)
    hint = ""
    if "Permission denied" in text or "ACL not found" in text or "403" in text:
        hint = ("; the stack runs with ACLs on: pass a token with --consul-token-file FILE or "
                "CONSUL_HTTP_TOKEN_FILE=FILE (make demo writes the operator's to .stack/tokens/operator.token)")
    return f"Consul at {address} refused the request: {text}{hint}"


def consul_unreachable(address: str, exc: Exception) -> str:
    """Why Consul could not be reached, in words: an HTTPS certificate this client does not
    trust is said so, with the variables that fix it."""
    if isinstance(exc, requests.exceptions.SSLError):
        return (f"Consul at {address} answered with a certificate this client does not trust, or asked for "
                f"a client certificate: set CONSUL_CACERT to the CA file that signed its certificate (and "
                f"CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY when it verifies clients)")
    return f"Consul at {address} is unreachable ({type(exc).__name__}); is the stack running? (make demo starts it)"


class JsonAwareParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a JSON object on stdout when --json was given
    (its subcommands' parsers are of this class too, and share what the command line said)."""

    json_requested = False

    def parse_known_args(self, args=None, namespace=None):
        if args is not None or not JsonAwareParser.json_requested:
            JsonAwareParser.json_requested = "--json" in (sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if JsonAwareParser.json_requested:
            emit_error(True, f"{self.prog}: {message}", EXIT_USAGE)
            sys.exit(EXIT_USAGE)
        super().error(message)


def emit_error(as_json: bool, message: str, code: int, prog: Optional[str] = None) -> int:
    """Print an error for people (stderr) and, with --json, for programs (stdout); return `code`."""
    print(f"{prog}: {message}" if prog else message, file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({"ok": False, "error": message, "exit": code}), flush=True)
    return code

