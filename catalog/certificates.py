"""TLS certificates the proxy serves: what a certificate is, and the rules it must keep.

A certificate is served under a *name*: an exact host (`demo.example.com`), a wildcard for every
name one level under a domain (`*.example.com`), or `default` (for a client whose name no other
certificate covers). Each comes with its private key and a source (`files`, `operator`,
`local-ca`, `acme`). Before anything serves it, it is checked here, and refused with the reason
when it breaks a rule (the previous certificate of that name keeps serving):

- the certificate chain and the key are PEM and parse (RSA or ECDSA);
- the key belongs to the first certificate of the chain;
- it is valid now, and for at least an hour more;
- its names (subjectAltName) cover the name it is served under (`default`: any).

The `cryptography` package parses and checks; the same package signs the local CA's certificates
(catalog.local_ca).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

DEFAULT = "default"
SOURCES = ("files", "operator", "local-ca", "acme")
MAX_PEM = 64 * 1024                  # a chain of a few certificates is a few KiB
MIN_LEFT = dt.timedelta(hours=1)     # a certificate that expires sooner is not worth switching to
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
NAME_RULE = ("a lower-case host name (demo.example.com), a wildcard for the names one level under a domain "
             "(*.example.com), or default")


class CertificateRefused(ValueError):
    """A certificate that is not served, and why (the message says what to do)."""


def name_ok(name: str) -> bool:
    if name == DEFAULT:
        return True
    if not isinstance(name, str) or len(name) > 253:
        return False
    host = name[2:] if name.startswith("*.") else name
    return bool(_HOST.fullmatch(host)) and (not name.startswith("*.") or "." in host)


def check_name(name: str) -> str:
    if not name_ok(name):
        raise CertificateRefused(f"{name!r} is not a certificate name: use {NAME_RULE}")
    return name


def file_stem(name: str) -> str:
    """The file name a certificate has in a certificate folder: *.example.com -> _wildcard.example.com."""
    return "_wildcard." + name[2:] if name.startswith("*.") else name


def name_of_stem(stem: str) -> str:
    return "*." + stem[len("_wildcard."):] if stem.startswith("_wildcard.") else stem


def lookup_names(host: str) -> Tuple[str, ...]:
    """The names whose certificate serves `host`, best first: itself, its wildcard, the default."""
    out = [host] if host else []
    head, _, rest = host.partition(".")
    if head and rest:
        out.append("*." + rest)
    out.append(DEFAULT)
    return tuple(out)


def covers(pattern: str, name: str) -> bool:
    """Whether a certificate name (exact or *.domain, as in a SAN) covers `name`."""
    pattern, name = pattern.lower().rstrip("."), name.lower()
    if pattern == name:
        return True
    if pattern.startswith("*.") and not name.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


@dataclass(frozen=True)
class Certificate:
    name: str                        # what it is served under
    chain: str                       # PEM, the leaf first
    key: str = field(repr=False)     # PEM private key
    source: str
    sans: Tuple[str, ...]
    issuer: str
    not_before: float                # Unix seconds
    not_after: float
    fingerprint: str                 # SHA-256 of the leaf, hex

    def days_left(self, now: Optional[float] = None) -> float:
        now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
        return (self.not_after - now) / 86400

    def summary(self, now: Optional[float] = None) -> dict:
        """What status pages show: never the key."""
        return {"name": self.name, "source": self.source, "sans": list(self.sans), "issuer": self.issuer,
                "not_before": _iso(self.not_before), "not_after": _iso(self.not_after),
                "days_left": round(self.days_left(now), 1), "fingerprint": self.fingerprint}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value, what: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise CertificateRefused(f"the {what} is not PEM text (it holds non-ASCII bytes)") from None
    if not isinstance(value, str) or not value.strip():
        raise CertificateRefused(f"the {what} is empty")
    if len(value) > MAX_PEM:
        raise CertificateRefused(f"the {what} is {len(value)} bytes; at most {MAX_PEM} are taken")
    return value.strip() + "\n"


def _common_name(name: x509.Name) -> str:
    cn = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else name.rfc4514_string()


def sans_of(cert: x509.Certificate) -> Tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return ()
    names = [n.lower() for n in ext.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def _public_bytes(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse(name: str, chain_pem, key_pem, source: str, now: Optional[dt.datetime] = None) -> Certificate:
    """A Certificate that keeps every rule above, or CertificateRefused saying which it breaks."""
    check_name(name)
    if source not in SOURCES:
        raise CertificateRefused(f"unknown certificate source {source!r}; one of {', '.join(SOURCES)}")
    chain_pem, key_pem = _text(chain_pem, "certificate"), _text(key_pem, "private key")
    try:
        certs: List[x509.Certificate] = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        raise CertificateRefused(f"the certificate is not valid PEM ({exc}); give the certificate, "
                                 "then any intermediates, each -----BEGIN CERTIFICATE-----") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateRefused(f"the private key is not an unencrypted PEM key ({exc})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CertificateRefused("the private key must be RSA or ECDSA")
    leaf = certs[0]
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise CertificateRefused("the private key does not belong to the certificate (the first one of the chain)")
    now = now or dt.datetime.now(dt.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise CertificateRefused(f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_after_utc - now < MIN_LEFT:
        raise CertificateRefused(f"the certificate expires within the hour ({leaf.not_valid_after_utc:%H:%M} UTC)")
    if leaf.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise CertificateRefused(f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    sans = sans_of(leaf)
    if name != DEFAULT and not any(covers(s, name) for s in sans):
        raise CertificateRefused(f"the certificate's names ({', '.join(sans) or 'none'}) do not cover {name}")
    # Kept as the parsed objects write themselves: whatever surrounded the PEM blocks (an openssl
    # pkcs12 export's "Bag Attributes", comments) never reaches nginx.
    chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return Certificate(name=name, chain=chain_pem, key=key_pem, source=source, sans=sans,
                       issuer=_common_name(leaf.issuer),
                       not_before=leaf.not_valid_before_utc.timestamp(), not_after=leaf.not_valid_after_utc.timestamp(),
                       fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest())


def describe(name: str, chain_pem: str, source: str, now: Optional[float] = None) -> dict:
    """What a certificate chain says about itself (names, issuer, validity), for readers that may
    not read its key (gatekeeper status); {"name", "source", "error"} when it does not parse."""
    try:
        leaf = x509.load_pem_x509_certificates(_text(chain_pem, "certificate").encode())[0]
    except (ValueError, CertificateRefused) as exc:
        return {"name": name, "source": source, "error": f"the certificate does not parse: {exc}"}
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    after = leaf.not_valid_after_utc.timestamp()
    return {"name": name, "source": source, "sans": list(sans_of(leaf)), "issuer": _common_name(leaf.issuer),
            "not_after": _iso(after), "days_left": round((after - now) / 86400, 1)}


def renew_due(cert: Certificate, now: Optional[float] = None) -> bool:
    """Whether two thirds of the certificate's lifetime have passed (when the stack's issuers renew)."""
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    return now >= cert.not_before + (cert.not_after - cert.not_before) * 2 / 3


def serving(names, host: str) -> Optional[str]:
    """The certificate name that serves `host` among `names` (exact, wildcard, default), or None."""
    for candidate in lookup_names(host):
        if candidate in names:
            return candidate
    return None
