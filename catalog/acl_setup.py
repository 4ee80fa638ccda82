"""Consul ACLs for the stack: bootstrap once, one policy and one token per part.

    python -m catalog.acl_setup --consul 127.0.0.1:8500 --tokens DIR [--node NAME ...] [--host NAME ...]

Idempotent: the management token is kept in DIR/bootstrap.token, policies are updated to the
rules below (so an upgrade that changes a rule takes effect by running it again), tokens are
found again by their description, and each part's secret is written to DIR/<part>.token (mode
0600; a file that holds it already is left alone). The agent's own token is set on the agent.
The last line printed is "ACLs up to date" or "ACLs changed: ..." with what was changed.

On several hosts each Consul agent gets a token of its own (`--node NAME`, written to
DIR/agent-NAME.token): a node identity, which may write that node's own catalog entry and read
services, and nothing of another node's. A Docker host (`--host NAME`) gets its agent's token and
a registrator token of its own (DIR/registrator-NAME.token, registrator's rules). A host taken over
cannot then rewrite the others' nodes, and one host's tokens are revoked without touching the
rest; running this again makes any revoked token anew (registrator reads its file again when
Consul refuses its token; an agent is given its new token with `consul acl set-agent-token`).

What each token may touch (least privilege):
- registrator: register/deregister services (service write), read nodes, its own KV prefix,
  read the gate records it applies (gatekeeper/gates/), the gate markers it writes into Swarm
  tasks (gatekeeper/markers/), the container actions it carries out (gatekeeper/actions/) and
  its agent's node name (agent read).
- gatekeeper: update checks (service write: Consul ties TTL updates to it), KV under
  gatekeeper/ only, sessions for its leader lock; read certificate chains (not their keys)
  for `status`.
- proxy-reloader: read services, nodes and the routing policies; write only its own
  `proxy-reloader` service, what it serves under proxy-reloader/served/ (for --report-check),
  and the TLS certificates under certificates/ (its local CA and ACME issuers write them; it
  alone of the daemons reads their private keys), with a session for the ACME issuer's lock.
- registrator, gatekeeper and proxy-reloader announce their metrics endpoints as instances of
  `proxystack-metrics` (registrator and gatekeeper may write any service already).
- prometheus: read the `proxystack-metrics` service and nodes (monitoring.targets, which tells
  Prometheus where the endpoints are), nothing else.
- operator (the CLI, the UI): read services and nodes, write under gatekeeper/ (policies,
  history, retests, default test images, scaling), read registrator/ (rejections) and
  proxy-reloader/ (what each proxy serves, for `gatekeeper wait`), write certificates/
  (`proxy-reloader cert add`); only read gatekeeper's own
  decisions (verdicts, gate records, container actions, healing records, the leader lock,
  the KV layout's schema version), so
  the operator cannot admit an instance its tests did not pass.
- viewer (read-only logins on the dashboard): read what the operator reads (services, nodes,
  gatekeeper/, registrator/, proxy-reloader/, certificate chains), write nothing.
- breakglass: the rare forced admission (`gatekeeper admit INSTANCE --reason ...`): write
  verdicts and history, read the rest of gatekeeper/ and the catalog. Given to no daemon; kept
  apart from the operator's token, and every use is recorded in the service's history.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import requests

from .consul_client import Tls, parse_address
from .stores.proxies import METRICS_SERVICE
from .kv_layout import (ACTIONS, CERTIFICATE_CHAINS, CERTIFICATES, GATEKEEPER, GATES, HEALING, HISTORY, LEADER, MARKERS,
                        POLICIES as KV_POLICIES, PROXY_RELOADER, REGISTRATOR, SCHEMA, SERVED, VERDICTS)

# gatekeeper's own decisions: what it alone writes (and the break-glass token, verdicts only)
DECISIONS = "".join(f'key_prefix "{prefix}" {{ policy = "read" }}\n' for prefix in (VERDICTS, GATES, MARKERS, ACTIONS, HEALING)) \
    + f'key "{LEADER}" {{ policy = "read" }}\nkey "{SCHEMA}" {{ policy = "read" }}\n'

POLICIES = {
    "agent": 'node_prefix "" { policy = "write" }\nservice_prefix "" { policy = "read" }\n',
    "registrator": f'service_prefix "" {{ policy = "write" }}\nnode_prefix "" {{ policy = "read" }}\n'
                   f'key_prefix "{REGISTRATOR}" {{ policy = "write" }}\n'
                   f'key_prefix "{GATES}" {{ policy = "read" }}\nkey_prefix "{ACTIONS}" {{ policy = "read" }}\n'
                   f'key_prefix "{MARKERS}" {{ policy = "read" }}\n'
                   f'key "{SCHEMA}" {{ policy = "read" }}\nagent_prefix "" {{ policy = "read" }}\n',
    "gatekeeper": f'service_prefix "" {{ policy = "write" }}\nnode_prefix "" {{ policy = "read" }}\n'
                  f'key_prefix "{GATEKEEPER}" {{ policy = "write" }}\nkey_prefix "{REGISTRATOR}" {{ policy = "read" }}\n'
                  f'key_prefix "{PROXY_RELOADER}" {{ policy = "read" }}\nsession_prefix "" {{ policy = "write" }}\n'
                  f'key_prefix "{CERTIFICATE_CHAINS}" {{ policy = "read" }}\n',
    "proxy-reloader": f'service_prefix "" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}\n'
                      f'key_prefix "{KV_POLICIES}" {{ policy = "read" }}\nkey "{SCHEMA}" {{ policy = "read" }}\n'
                      f'service "proxy-reloader" {{ policy = "write" }}\n'
                      f'service "{METRICS_SERVICE}" {{ policy = "write" }}\n'
                      f'key_prefix "{SERVED}" {{ policy = "write" }}\n'
                      f'key_prefix "{CERTIFICATES}" {{ policy = "write" }}\n'
                      f'session_prefix "" {{ policy = "write" }}\n',
    "prometheus": f'service "{METRICS_SERVICE}" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}\n',
    "operator": f'service_prefix "" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}\n'
                f'key_prefix "{GATEKEEPER}" {{ policy = "write" }}\nkey_prefix "{REGISTRATOR}" {{ policy = "read" }}\n'
                f'key_prefix "{PROXY_RELOADER}" {{ policy = "read" }}\nsession_prefix "" {{ policy = "read" }}\n'
                f'key_prefix "{CERTIFICATES}" {{ policy = "write" }}\n'
                + DECISIONS,
    "viewer": f'service_prefix "" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}\n'
              f'key_prefix "{GATEKEEPER}" {{ policy = "read" }}\nkey_prefix "{REGISTRATOR}" {{ policy = "read" }}\n'
              f'key_prefix "{PROXY_RELOADER}" {{ policy = "read" }}\n'
              f'key_prefix "{CERTIFICATE_CHAINS}" {{ policy = "read" }}\n',
    "breakglass": f'service_prefix "" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}\n'
                  f'key_prefix "{GATEKEEPER}" {{ policy = "read" }}\nkey_prefix "{VERDICTS}" {{ policy = "write" }}\n'
                  f'key_prefix "{HISTORY}" {{ policy = "write" }}\nkey_prefix "{REGISTRATOR}" {{ policy = "read" }}\n',
}
PARTS = ("registrator", "gatekeeper", "proxy-reloader", "operator", "viewer", "prometheus", "breakglass")


NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class AclSetupError(RuntimeError):
    pass


class Api:
    def __init__(self, address: str, token: str = ""):
        scheme, host, port = parse_address(address)
        self.base = f"{scheme}://{host}:{port}"
        self.token = token
        self.tls = Tls.for_scheme(scheme)

    def call(self, method: str, path: str, body=None, ok=(200,)):
        headers = {"X-Consul-Token": self.token} if self.token else {}
        r = requests.request(method, self.base + path, headers=headers, timeout=10,
                             data=json.dumps(body) if body is not None else None,
                             verify=self.tls.verify, cert=self.tls.cert)
        if r.status_code not in ok:
            raise AclSetupError(f"{method} {path}: {r.status_code} {r.text.strip()[:200]}")
        return r.json() if r.text.strip().startswith(("{", "[")) else r.text


def write_secret(path: Path, secret: str) -> bool:
    """Write the token file (0600) unless it holds that secret already (its owner and mode
    are then left as they are: an installer may have let a service's user read it). True when
    it was written."""
    try:
        if path.read_text().strip() == secret:
            return False
    except OSError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return True


def bootstrap(api: Api, wait: float = 60.0) -> str:
    """The management token from Consul's one-time bootstrap. A cluster that has just elected
    its leader answers "currently in legacy mode" for a few seconds, until its servers agree
    on the ACL system: asked again until `wait` seconds have passed."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return api.call("PUT", "/v1/acl/bootstrap")["SecretID"]
        except AclSetupError as exc:
            if "legacy mode" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(1.0)


def setup(address: str, tokens: Path, changes: Optional[List[str]] = None, nodes: Sequence[str] = (),
          hosts: Sequence[str] = ()) -> dict:
    """Bootstrap (once), policies to this release's rules, one token per part and its file, one
    agent token per node in `nodes` or `hosts` (secrets["agent-NAME"]) and one registrator token
    per host (secrets["registrator-NAME"]); what was changed is appended to `changes` (nothing on
    a run that finds all as it should be)."""
    changes = [] if changes is None else changes
    Api(address)                            # a bad address or TLS setting: said before anything is written
    if not tokens.is_dir():                 # made private; an existing folder keeps the mode it was given
        tokens.mkdir(parents=True)
        os.chmod(tokens, 0o700)
    boot_file = tokens / "bootstrap.token"
    if boot_file.exists():
        management = boot_file.read_text().strip()
    else:
        try:
            management = bootstrap(Api(address))
        except AclSetupError as exc:
            raise AclSetupError(f"{exc}. If ACLs were bootstrapped before, put that management token "
                                f"in {boot_file}") from None
        write_secret(boot_file, management)
        changes.append("bootstrapped")
    api = Api(address, management)
    existing = {p["Name"]: p["ID"] for p in api.call("GET", "/v1/acl/policies")}
    for name, rules in POLICIES.items():
        body = {"Name": f"proxystack-{name}", "Rules": rules,
                "Description": f"proxystack {name}: least privilege for its job"}
        if body["Name"] in existing:
            current = api.call("GET", f"/v1/acl/policy/{existing[body['Name']]}")
            if (current.get("Rules"), current.get("Description")) != (rules, body["Description"]):
                api.call("PUT", f"/v1/acl/policy/{existing[body['Name']]}", body)
                changes.append(f"policy {name} updated")
        else:
            api.call("PUT", "/v1/acl/policy", body)
            changes.append(f"policy {name} created")
    by_description = {t.get("Description"): t["AccessorID"] for t in api.call("GET", "/v1/acl/tokens")}
    wanted = {part: {"Policies": [{"Name": f"proxystack-{part}"}]} for part in ("agent",) + PARTS}
    own_node = ""
    if nodes or hosts:
        config = api.call("GET", "/v1/agent/self")["Config"]
        datacenter, own_node = config["Datacenter"], config["NodeName"]
        for node in (*nodes, *hosts):
            wanted[f"agent-{node}"] = {"NodeIdentities": [{"NodeName": node, "Datacenter": datacenter}]}
        for host in hosts:
            wanted[f"registrator-{host}"] = wanted["registrator"]
    secrets = {}
    for part, grants in wanted.items():
        description = f"proxystack {part}"
        if description in by_description:
            secret = api.call("GET", f"/v1/acl/token/{by_description[description]}")["SecretID"]
        else:
            secret = api.call("PUT", "/v1/acl/token", {"Description": description, **grants})["SecretID"]
            changes.append(f"token {part} created")
        secrets[part] = secret
        if write_secret(tokens / f"{part}.token", secret):
            changes.append(f"{part}.token written")
    # the agent this talks to: its own node identity when it is one of the nodes named (else, on
    # several hosts, every run would give it back the shared token, which may write any node)
    api.call("PUT", "/v1/agent/token/agent", {"Token": secrets.get(f"agent-{own_node}", secrets["agent"])})
    return secrets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m catalog.acl_setup", description=__doc__.split("\n\n")[0])
    p.add_argument("--consul", default="127.0.0.1:8500")
    p.add_argument("--tokens", required=True, help="folder for the token files (created 0700)")
    p.add_argument("--node", action="append", default=[], metavar="NAME",
                   help="a Consul agent's node name: a token of its own in agent-NAME.token (repeatable)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="a Docker host's node name: its agent's token and a registrator token of its own, "
                        "registrator-NAME.token (repeatable)")
    args = p.parse_args(argv)
    for option, names in (("--node", args.node), ("--host", args.host)):
        bad = [n for n in names if not NODE_NAME.fullmatch(n)]
        if bad:
            p.error(f"{option} {bad[0]!r}: a node name is letters, digits and '-' (at most 63), "
                    "as Consul's node identities take it")
    changes: List[str] = []
    try:
        setup(args.consul, Path(args.tokens), changes, args.node, args.host)
    except (AclSetupError, requests.RequestException) as exc:
        print(f"acl setup: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:                      # --consul, the CONSUL_* TLS variables
        print(f"acl setup: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:                         # the token folder: not creatable, a file not readable
        print(f"acl setup: {exc.filename or args.tokens}: {exc.strerror}; fix its owner or mode, or "
              "pass another --tokens", file=sys.stderr)
        return 1
    print(f"ACL tokens for {', '.join(PARTS)} in {args.tokens}")
    # the last line says whether anything changed (Ansible's changed_when reads it)
    print(f"ACLs changed: {'; '.join(changes)}" if changes else "ACLs up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
