"""The certificates this proxy serves, from where they come, merged by precedence:

    files      a folder the operator points at (--cert-dir): HOST.crt + HOST.key,
               _wildcard.example.com.crt for *.example.com, default.crt; re-read on change
    operator   Consul KV, written by `proxy-reloader cert add` (catalog.stores.certificates)
    acme       Consul KV, written by an ACME issuer
    local-ca   Consul KV, written by the local CA issuer below (--local-ca) for a routed host that
               has no certificate from anywhere else

A name served by several sources gets the first of that list. Every certificate is checked
(catalog.certificates) before it is served; one that breaks a rule is reported (status, log) and
the name keeps the certificate it had from that source, if any: a bad file or key never takes a
working certificate away.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Set, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from catalog import local_ca
from catalog.certificates import (DEFAULT, Certificate, CertificateRefused, file_stem, lookup_names, name_of_stem,
                                  name_ok, parse, renew_due)
from catalog.kv_layout import ACME_CHALLENGES
from catalog.stores.certificates import CertificateStore, StoredCertificate, checked, entries_from_kv

from . import contract

log = logging.getLogger(__name__)

PRECEDENCE = ("files", "operator", "acme", "local-ca")
ISSUED = ("acme", "local-ca")          # the sources the stack issues (and renews) itself
MAX_CHALLENGES = contract.CONTRACT["challenges"]["count"][1]
MAX_CERTIFICATES = contract.CONTRACT["certificates"]["count"][1]


class _Source:
    """One source's certificates: the last good one of each name, and what was refused."""

    def __init__(self, label: str):
        self.label = label
        self.good: Dict[str, Certificate] = {}
        self.errors: Dict[str, str] = {}

    def take(self, found: Dict[str, Tuple[Optional[Certificate], Optional[str]]]) -> bool:
        """`found`: name -> (certificate, None) or (None, why refused). True when what is served changed."""
        before = {n: c.fingerprint for n, c in self.good.items()}
        errors = {}
        good = {n: c for n, c in self.good.items() if n in found}
        for name, (cert, error) in found.items():
            if cert is not None:
                good[name] = cert
            else:
                errors[name] = error
        self.good = good                     # one assignment: /status and /metrics read it from other threads
        for name, error in errors.items():
            if self.errors.get(name) != error:
                kept = " (its previous certificate keeps serving)" if name in self.good else ""
                log.error("certificate %s from %s refused%s: %s", name, self.label, kept, error)
        self.errors = errors
        return before != {n: c.fingerprint for n, c in self.good.items()}


class CertificateBook:
    def __init__(self, folder: Optional[Path] = None):
        self.folder = Path(folder) if folder else None
        self.files = _Source("files")
        self.kv = _Source("Consul")
        self.challenges: Dict[str, str] = {}      # ACME HTTP-01: token -> key authorization
        self._signature: Optional[tuple] = None
        self.routed: Optional[Set[str]] = None    # the host names routes name now (None: not known yet)

    # --- the sources -----------------------------------------------------------------------
    def scan_files(self) -> bool:
        """Read the folder again if anything in it changed. True when what is served changed."""
        if self.folder is None:
            return False
        try:
            entries = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(self.folder)
                             if e.name.endswith((".crt", ".key")))
        except OSError as exc:
            entries = [("error", str(exc))]
        if entries == self._signature:
            return False
        self._signature = entries
        return self.files.take(read_folder(self.folder))

    def take_kv(self, items: Optional[Dict[str, str]]) -> bool:
        """The certificates/ prefix as Consul answered it (None: unchanged). True when what is served changed."""
        if items is None:
            return False
        found = {}
        for name, entry in entries_from_kv(items).items():
            found[name] = _checked(entry)
        challenges = {}
        for key, answer in sorted(items.items()):
            token = key[len(ACME_CHALLENGES):]
            if not key.startswith(ACME_CHALLENGES) or not token:
                continue
            # checked one by one: one bad entry must not make nginx refuse the whole push
            if not (contract.name_ok("acme_token", token) and contract.name_ok("key_authorization", answer)):
                log.error("ACME challenge %s in Consul is no token and key authorization: left out", key)
            elif len(challenges) >= MAX_CHALLENGES:
                log.error("more than %d ACME challenges in Consul: %s left out", MAX_CHALLENGES, key)
            else:
                challenges[token] = answer
        changed = challenges != self.challenges
        self.challenges = challenges
        return self.kv.take(found) or changed

    # --- what is served --------------------------------------------------------------------
    def serving(self) -> Dict[str, Certificate]:
        out: Dict[str, Certificate] = {}
        for source in (self.files, self.kv):
            for name, cert in source.good.items():
                if name not in out or PRECEDENCE.index(cert.source) < PRECEDENCE.index(out[name].source):
                    out[name] = cert
        return dict(sorted(out.items()))

    def watched(self) -> Dict[str, Certificate]:
        """The certificates whose expiry matters: every one served, but those the stack issued
        (local CA, ACME) for a host name no route names any more, which are no longer renewed."""
        return {n: c for n, c in self.serving().items()
                if not (c.source in ISSUED and n != DEFAULT and self.routed is not None and n not in self.routed)}

    def errors(self) -> Dict[str, str]:
        out = {f"files: {n}": e for n, e in self.files.errors.items()}
        out.update({f"Consul: {n}": e for n, e in self.kv.errors.items()})
        return out

    def for_push(self) -> Dict[str, dict]:
        """What nginx gets: each certificate the contract takes (a checked one always is), at most
        the contract's count; one that is not is left out here, never refusing the whole push."""
        out = {}
        for n, c in self.serving().items():
            entry = {"cert": c.chain, "key": c.key}
            reason = contract.check_certificate(n, entry)
            if reason or len(out) >= MAX_CERTIFICATES:
                log.error("certificate %s left out of the push: %s", n, reason or f"more than {MAX_CERTIFICATES}")
                continue
            out[n] = entry
        return out

    def status(self) -> dict:
        return {"certificates": {n: c.summary() for n, c in self.serving().items()},
                "certificate_errors": self.errors()}


def _checked(entry: StoredCertificate) -> Tuple[Optional[Certificate], Optional[str]]:
    try:
        return checked(entry), None
    except CertificateRefused as exc:
        return None, str(exc)


def read_folder(folder: Path) -> Dict[str, Tuple[Optional[Certificate], Optional[str]]]:
    """Each NAME.crt with its NAME.key, checked: name -> (certificate, None) or (None, why)."""
    found: Dict[str, Tuple[Optional[Certificate], Optional[str]]] = {}
    try:
        names = sorted(p for p in os.listdir(folder) if p.endswith(".crt"))
    except OSError as exc:
        log.error("certificate folder %s cannot be read: %s", folder, exc)
        return found
    for file_name in names:
        stem = file_name[:-len(".crt")]
        name = name_of_stem(stem)
        if not name_ok(name):
            found[stem] = (None, f"{file_name}: the file name is no certificate name: use HOST.crt, "
                                 "_wildcard.DOMAIN.crt for *.DOMAIN, or default.crt")
            continue
        try:
            chain = (folder / file_name).read_bytes()
            key = (folder / f"{stem}.key").read_bytes()
        except OSError as exc:
            found[name] = (None, f"{file_name}: {exc.strerror or exc}: each HOST.crt needs its HOST.key beside it")
            continue
        try:
            found[name] = (parse(name, chain, key, "files"), None)
        except CertificateRefused as exc:
            found[name] = (None, f"{file_name}: {exc}")
    return found


def ensure_fallback(cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate nginx's TLS listener starts with; never served to a client."""
    if cert_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxystack.invalid")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650)).sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class LocalIssuer:
    """Issues, from the stack's local CA, a certificate for each routed host that has none from
    anywhere else (the default certificate does not count), and renews its own after two thirds
    of their lifetime. Written to Consul with check-and-set, so when several proxies issue, one
    certificate per host results and every proxy serves it. With `default_names` (such as
    localhost, 127.0.0.1) it issues the default certificate too, for those names, unless another
    source has one."""

    def __init__(self, ca: local_ca.LocalCA, store: CertificateStore, days: float = local_ca.LEAF_DAYS,
                 default_names: Iterable[str] = ()):
        self.ca, self.store, self.days = ca, store, days
        self.default_names = tuple(default_names)
        self.issued = 0

    def wanted(self, hosts: Iterable[str], serving: Dict[str, Certificate]) -> Dict[str, Optional[Certificate]]:
        """host -> the local CA certificate it has now (None: none yet) for each host to issue for."""
        out = {}
        if self.default_names:
            current = serving.get(DEFAULT)
            if current is None:
                out[DEFAULT] = None
            elif current.source == "local-ca" and renew_due(current):
                out[DEFAULT] = current
        for host in sorted(set(hosts)):
            if not name_ok(host):
                continue                      # *.localhost: a route may name it, no certificate can
            name = next((n for n in lookup_names(host) if n in serving and n != DEFAULT), None)
            if name is None:
                out[host] = None
            elif name == host and serving[name].source == "local-ca" and renew_due(serving[name]):
                out[host] = serving[name]
        return out

    def issue(self, hosts: Iterable[str], serving: Dict[str, Certificate]) -> int:
        """Issue what is wanted; the number of certificates written."""
        written = 0
        for host, current in self.wanted(hosts, serving).items():
            index = self.store.index_of(host)
            if current is None and index:
                continue                      # another proxy wrote one; its answer is on the way
            chain, key = local_ca.issue(self.ca, host, self.days,
                                        sans=self.default_names if host == DEFAULT else ())
            try:
                cert = parse(host, chain, key, "local-ca")
            except CertificateRefused as exc:
                log.error("local CA: no certificate for %s: %s", host, exc)
                continue
            if self.store.put(cert, cas=index):
                written += 1
                log.info("local CA: %s certificate for %s (valid until %s)", "renewed" if current else "issued",
                         host, cert.summary()["not_after"])
        self.issued += written
        return written
