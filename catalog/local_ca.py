"""A certificate authority of the stack's own, for hosts that have no certificate from anywhere
else (as caddy's `tls internal`): made once in a folder (root.crt, readable by anyone who wants to
trust it; root.key, 0600), then signing a short-lived certificate for each routed host.

Clients trust it with `curl --cacert .stack/ca/root.crt`, or by adding root.crt to their trust
store. Its certificates are meant for development, tests and internal names, not for the public.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_DAYS = 3650
# Renewed after two thirds of it (catalog.certificates.renew_due), with 30 days left: the
# expiry alert (under 14 days, monitoring/rules.yml) fires only when renewing fails.
LEAF_DAYS = 90


@dataclass(frozen=True)
class LocalCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    folder: Path

    @property
    def root_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def _pem_key(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure(folder) -> Tuple[LocalCA, bool]:
    """The CA in `folder`, made when absent: (ca, True when made now). An existing one is kept."""
    folder = Path(folder)
    crt, key_file = folder / "root.crt", folder / "root.key"
    if crt.exists() and key_file.exists():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        return LocalCA(cert, key, folder), False
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proxystack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "proxystack local CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=ROOT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_file, _pem_key(key), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
    return LocalCA(cert, key, folder), True


def general_name(name: str) -> x509.GeneralName:
    """A SAN entry: an IP address for an address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(ca: LocalCA, name: str, days: float = LEAF_DAYS, sans: Sequence[str] = ()) -> Tuple[str, str]:
    """(certificate PEM, key PEM) of a new certificate for `name` (a host or *.domain; for the
    default certificate, the host names or addresses in `sans`), signed by `ca` (clients hold the
    root; the chain is the certificate alone)."""
    sans = tuple(sans) or (name,)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([general_name(n) for n in sans]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)
