"""TLS for tests and benchmarks: certificates made on the spot (any names, any validity), the
certificate a listener serves for a name, and an HTTPS connection that dials one address while
asking for another name (SNI), as `curl --resolve` does."""
from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import socket
import ssl
from typing import Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from catalog.local_ca import LocalCA, general_name


def make_cert(ca: LocalCA, names: Sequence[str], days: float = 30, starts: float = -1,
              key: Optional[ec.EllipticCurvePrivateKey] = None) -> Tuple[str, str]:
    """(certificate PEM, key PEM) for `names`, signed by `ca`, valid from `starts` days from now
    for `days` days (negative `starts` + small `days`: already expired)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    begin = now + dt.timedelta(days=starts)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(begin).not_valid_after(begin + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([general_name(n) for n in names]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key


def fingerprint(pem: str) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)).hexdigest()


def served_fingerprint(port: int, server_name: Optional[str], address: str = "127.0.0.1", timeout: float = 5) -> str:
    """SHA-256 of the certificate a new handshake gets for `server_name` (None: no SNI).
    Raises ssl.SSLError when the server fails the handshake."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


class TLSConnection(http.client.HTTPSConnection):
    """HTTPS to `address`:`port` with `server_name` as SNI (and as Host, by http.client)."""

    def __init__(self, address: str, port: int, server_name: str, context: ssl.SSLContext, timeout: float = 10):
        super().__init__(server_name, port, context=context, timeout=timeout)
        self._address = address

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def client_context(cafile: str) -> ssl.SSLContext:
    """A client context that trusts `cafile` only and checks the host name, as a browser would."""
    return ssl.create_default_context(cafile=cafile)
