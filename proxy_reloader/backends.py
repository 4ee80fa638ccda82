"""The backend table pushed to nginx in dynamic mode.

    push   {"generation": N, "full": bool, "services": {NAME: ENTRY | null},
            "certificates": {CERTNAME: {"cert": PEM, "key": PEM} | null}}     (certificates: optional)
    ENTRY  {"service": NAME, "stable": POOL | null, "canary": POOL | null, "weight": 0..100,
            "route": ROUTE}
    POOL   {"version": V, "servers": [[ADDRESS, PORT, VERSION], ...]}     (at least one server)
    ROUTE  {"path": "/demo/", "hosts": [HOST, ...], "strip_prefix": bool, and the route's own
            settings: "timeout", "connect_timeout" (seconds), "body_size" (bytes), "buffering",
            "retries", "allow" ([NETWORK, ...]), "https", "hsts_max_age", "hsts_subdomains"}

The rules of that shape live in one file, lua/proxystack/contract.json, which `contract` here
and nginx's `proxystack/contract.lua` both check by. proxy-reloader computes every entry from
admitted instances, the routing policy and the stable version's labels (a route with no stable
pool answers 503); nginx picks the route of each request from these entries too, so no route
change needs a new nginx.conf; nginx
checks the same rules again and refuses a whole push if one entry breaks them, keeping the
table it had.
The table file beside nginx.conf holds the last full table in the push format, certificates and
their keys included (so it is readable by its owner only), so an nginx that starts or restarts
routes and serves HTTPS right before proxy-reloader pushes anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional

from catalog import route_settings
from catalog.routing import Pool, Route

from . import contract


def _pool(pool: Optional[Pool]) -> Optional[dict]:
    if pool is None or not pool.servers:
        return None
    versions = pool.server_versions or (pool.version,) * len(pool.servers)
    return {"version": pool.version,
            "servers": [[a, p, ver] for (a, p), ver in zip(pool.servers, versions)]}


def entry(route: Route) -> dict:
    """A route's table entry: where it answers, how, who serves it, with what split."""
    stable = _pool(route.stable)
    canary = _pool(route.canary) if stable else None
    where = {"path": route.path, "hosts": list(route.hosts), "strip_prefix": route.strip_prefix,
             **route_settings.for_proxy(route.settings)}
    return {"service": route.service, "stable": stable, "canary": canary,
            "weight": route.weight if canary else 0, "route": where}


def check_entry(name: str, e: Optional[dict]) -> None:
    """Raise ValueError when an entry breaks the contract (contract.json, which the Lua side
    checks by too)."""
    reason = contract.check_entry(name, e)
    if reason:
        raise ValueError(reason)


def push_body(generation: int, entries: Dict[str, Optional[dict]], full: bool,
              certificates: Optional[Dict[str, Optional[dict]]] = None,
              challenges: Optional[Dict[str, Optional[str]]] = None) -> bytes:
    for name, e in entries.items():
        check_entry(name, e)
    body = {"generation": generation, "full": full, "services": entries}
    if certificates is not None:
        for name, cert in certificates.items():
            reason = contract.check_certificate(name, cert)
            if reason:
                raise ValueError(reason)
        body["certificates"] = certificates
    if challenges is not None:
        body["challenges"] = challenges
        ok, reason = contract.check_push({"generation": 1, "services": {}, "challenges": challenges})
        if not ok:
            raise ValueError(reason)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_table(path: Path, generation: int, entries: Dict[str, dict],
                certificates: Optional[Dict[str, dict]] = None, challenges: Optional[Dict[str, str]] = None) -> None:
    """The full table, atomically, for nginx's next start (read in init_by_lua); 0600, since it
    holds the certificates' private keys. Raises ValueError when an entry breaks the contract and
    OSError when the file cannot be written (a full disk, say); either way the file keeps the
    table it held and no temporary file stays behind."""
    body = push_body(generation, entries, full=True, certificates=certificates or {}, challenges=challenges or {})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
