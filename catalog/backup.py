"""Backup and restore of everything the stack keeps: a Consul snapshot (the KV store: verdicts,
routing policies, history, healing and scaling records; the catalog; ACL policies and tokens) and
the token files the daemons and the operator read, which a snapshot cannot give back as files.

    python -m catalog.backup save FILE --consul ADDR --tokens DIR
    python -m catalog.backup restore FILE --consul ADDR --tokens DIR
    python -m catalog.backup check FILE       (what a backup holds, checked whole; no Consul needed)
    (make backup FILE=... / make restore FILE=...: the stack's own Consul and .stack/tokens)

Exit codes, as every proxystack command's: 0 done; 2 bad input (not a backup, incomplete, another
format, a token folder without the management token); 3 Consul unreachable or refusing.

A backup is one tar file, readable by its owner only (it holds every token): `snapshot.tgz` as
Consul's /v1/snapshot gives it, `tokens/NAME.token`, and `manifest.json` (when, from which
Consul, which token files). Saving needs the management token (DIR/bootstrap.token).

Restoring replaces the state of the Consul at ADDR with the backup's (Consul's snapshot restore),
using the management token the token folder holds for *that* Consul (on a fresh machine: the one
the stack's start wrote), then writes the backup's token files there: they are the valid ones
from then on. Nothing is written when the file is not a backup or Consul refuses it.
docs/operations.md has the runbook.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, Tuple

import requests

from catalog.cli import consul_unreachable
from catalog.consul_client import Tls, parse_address

SNAPSHOT, MANIFEST, TOKENS = "snapshot.tgz", "manifest.json", "tokens/"
FORMAT = 1


class BackupError(RuntimeError):
    """What went wrong and what to do; nothing was changed."""
    exit_code = 3


class BadInput(BackupError):
    """The file is not a backup this release reads, or the token folder lacks what is needed."""
    exit_code = 2


def _base(address: str) -> str:
    scheme, host, port = parse_address(address)
    return f"{scheme}://{host}:{port}"


def _management_token(tokens: Path) -> str:
    path = tokens / "bootstrap.token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise BadInput(f"cannot read the management token {path} ({exc.strerror}): point --tokens at the "
                          f"folder the stack's ACL set-up wrote (.stack/tokens)") from None


def _call(method: str, url: str, token: str, **kw) -> requests.Response:
    try:
        tls = Tls.for_scheme(url.partition("://")[0])
        r = requests.request(method, url, headers={"X-Consul-Token": token}, timeout=120, verify=tls.verify,
                             cert=tls.cert, **kw)
    except requests.exceptions.SSLError as exc:
        raise BackupError(consul_unreachable(url.split('/v1/')[0], exc)) from None
    except requests.RequestException as exc:
        raise BackupError(f"Consul at {url.split('/v1/')[0]} did not answer ({exc.__class__.__name__}); is it "
                          f"running? (`make status`)") from None
    if r.status_code == 403:
        raise BackupError("Consul refused the management token in bootstrap.token (403): it is not this "
                          "Consul's; use the token folder of the Consul you point at")
    if r.status_code != 200:
        raise BackupError(f"Consul answered {r.status_code} to {method} /v1/{url.split('/v1/', 1)[1]}: "
                          f"{r.text.strip()[:300]}")
    return r


def save(address: str, tokens: Path, out: Path) -> dict:
    """Write a backup of the Consul at `address` and the token files in `tokens` to `out`."""
    snapshot = _call("GET", f"{_base(address)}/v1/snapshot", _management_token(tokens)).content
    files = {p.name: p for p in sorted(tokens.glob("*.token"))}
    manifest = {"format": FORMAT, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "consul": address, "snapshot_bytes": len(snapshot), "tokens": sorted(files)}
    # a new file of our own, its owner's only from the first byte (never one left over, nor a link)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
            _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode(), 0o600)
            _add(tar, SNAPSHOT, snapshot, 0o600)
            for name, path in files.items():
                _add(tar, TOKENS + name, path.read_bytes(), 0o600)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def read(path: Path) -> Tuple[dict, bytes, Dict[str, bytes]]:
    """(manifest, snapshot, {token file name: content}) of a backup, checked whole."""
    try:
        with tarfile.open(path, mode="r") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            if MANIFEST not in members or SNAPSHOT not in members:
                raise BadInput(f"{path} is not a proxystack backup (no {MANIFEST} or {SNAPSHOT} in it)")
            manifest = json.loads(tar.extractfile(members[MANIFEST]).read())
            snapshot = tar.extractfile(members[SNAPSHOT]).read()
            tokens = {}
            for name, m in members.items():
                base = name[len(TOKENS):]
                if name.startswith(TOKENS) and base.endswith(".token") and "/" not in base and not base.startswith("."):
                    tokens[base] = tar.extractfile(m).read()
    except tarfile.ReadError:
        raise BadInput(f"{path} is not a proxystack backup (not a tar file): `make backup FILE=...` writes one") from None
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise BadInput(f"cannot read {path} as a backup: {exc}") from None
    if not isinstance(manifest, dict) or not all(k in manifest for k in ("format", "saved", "consul", "tokens")):
        raise BadInput(f"{path} has no manifest this proxystack reads (format, saved, consul, tokens)")
    if manifest.get("format") != FORMAT:
        raise BadInput(f"{path} is a backup of format {manifest.get('format')!r}; this proxystack reads format "
                          f"{FORMAT}: restore it with the proxystack release that saved it")
    if len(snapshot) != manifest.get("snapshot_bytes") or sorted(tokens) != manifest.get("tokens"):
        raise BadInput(f"{path} is incomplete (its snapshot or token files differ from its manifest)")
    if "bootstrap.token" not in tokens:
        raise BadInput(f"{path} holds no bootstrap.token: the restored Consul could not be managed")
    return manifest, snapshot, tokens


def _hand_node_back(address: str, token: str) -> None:
    """On another machine (or a fresh data folder) the agent has a new node ID (and the token it
    syncs with is the backup's agent token, set just before), and the snapshot's
    catalog holds its node name under the old one: Consul then refuses every sync of that agent
    ("Node name ... is reserved"), so nothing registered after the restore would reach the catalog.
    The old entry goes; the agent registers itself and its services again at its next sync."""
    agent = _call("GET", f"{_base(address)}/v1/agent/self", token).json()["Config"]
    name, node_id = agent["NodeName"], agent["NodeID"]
    node = _call("GET", f"{_base(address)}/v1/catalog/node/{name}", token).json()
    if node and node["Node"]["ID"] != node_id:
        _call("PUT", f"{_base(address)}/v1/catalog/deregister", token, json={"Node": name})


def restore(address: str, tokens: Path, path: Path) -> dict:
    """Replace the state of the Consul at `address` with the backup's, then its token files."""
    manifest, snapshot, files = read(path)
    token = _management_token(tokens)
    _call("PUT", f"{_base(address)}/v1/snapshot", token, data=snapshot)
    # Consul's ACLs are the backup's now: so are the management token and the agent's own
    restored = files.get("bootstrap.token")
    token = restored.decode().strip() if restored else token
    agent_token = files.get("agent.token")
    if agent_token:
        _call("PUT", f"{_base(address)}/v1/agent/token/agent", token, json={"Token": agent_token.decode().strip()})
    _hand_node_back(address, token)
    for name, content in files.items():
        # A token file that exists keeps its owner and mode (a daemon's user may read it, as
        # Ansible's layout has it); a new one is its owner's only, whatever the archive says.
        target = tokens / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=tokens)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            if target.exists():
                st = target.stat()
                os.chown(tmp, st.st_uid, st.st_gid)
                os.chmod(tmp, st.st_mode & 0o777)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m catalog.backup", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("save", "restore", "check"))
    p.add_argument("file", type=Path, help="the backup file (written by save, read by restore and check)")
    p.add_argument("--consul", default="127.0.0.1:8500", help="Consul's HTTP address (default 127.0.0.1:8500)")
    p.add_argument("--tokens", type=Path, default=Path(".stack/tokens"),
                   help="the token folder: its bootstrap.token manages that Consul (default .stack/tokens)")
    p.add_argument("--json", action="store_true", help="print the backup's manifest as JSON")
    args = p.parse_args(argv)
    try:
        if args.action == "save":
            manifest = save(args.consul, args.tokens, args.file)
            said = (f"saved {args.file}: Consul snapshot ({manifest['snapshot_bytes']} bytes) and "
                    f"{len(manifest['tokens'])} token files; keep it where only you can read it (it holds every token)")
        elif args.action == "check":
            manifest = read(args.file)[0]
            said = (f"{args.file}: a backup saved {manifest['saved']} from Consul at {manifest['consul']}: snapshot of "
                    f"{manifest['snapshot_bytes']} bytes, token files {', '.join(manifest['tokens'])}")
        else:
            manifest = restore(args.consul, args.tokens, args.file)
            said = (f"restored {args.file} (saved {manifest['saved']} from {manifest['consul']}) into Consul at "
                    f"{args.consul}; its {len(manifest['tokens'])} token files are in {args.tokens}; start (or restart) "
                    f"the stack's daemons so that they use them: make demo, or scripts/stack.sh up")
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:                         # a folder that does not exist, no permission
        print(f"error: {exc.filename or args.file}: {exc.strerror}; nothing written", file=sys.stderr)
        return BadInput.exit_code
    except ValueError as exc:                      # --consul, the CONSUL_* TLS variables
        print(f"error: {exc}; nothing written", file=sys.stderr)
        return BadInput.exit_code
    print(json.dumps(manifest) if args.json else said)
    return 0


if __name__ == "__main__":
    sys.exit(main())
