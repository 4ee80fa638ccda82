"""An ACME client (RFC 8555) for HTTP-01: an account, an order per host, its challenge answered
by every proxy, the certificate downloaded. Only what the issuer (acme_issuer.py) needs:

    client = AcmeClient(directory_url, account_key_pem, ca_bundle)
    client.register(email)                       # the account (found again when it exists)
    order = client.new_order(host)               # {"url", "status", "authorizations", "finalize"}
    for challenge in client.http01(order):       # {"url", "token", "key_authorization"}
        ... make the proxies answer GET /.well-known/acme-challenge/TOKEN with key_authorization
        client.respond(challenge)
    chain_pem = client.finish(order, key_pem)    # waits for validation, finalizes with a CSR, downloads

Requests are JWS-signed with the account key (ES256); a rejected nonce is retried with a fresh
one, as RFC 8555 section 6.5 says a client should.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Dict, List, Optional

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

BAD_NONCE = "urn:ietf:params:acme:error:badNonce"


class AcmeError(RuntimeError):
    """The ACME server refused or failed; the message carries its problem document, `problem`
    its type (urn:ietf:params:acme:error:...) when the server sent one."""

    def __init__(self, message: str, problem: str = ""):
        super().__init__(message)
        self.problem = problem


ACCOUNT_GONE = ("urn:ietf:params:acme:error:accountDoesNotExist", "urn:ietf:params:acme:error:unauthorized")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_account_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def csr_for(host: str, key_pem: str) -> bytes:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


class AcmeClient:
    def __init__(self, directory_url: str, account_key_pem: str, ca_bundle: Optional[str] = None,
                 kid: Optional[str] = None, timeout: float = 10.0, poll: float = 0.5, patience: float = 120.0):
        self.directory_url, self.kid = directory_url, kid
        self.key = serialization.load_pem_private_key(account_key_pem.encode(), password=None)
        self.http = requests.Session()
        # given on each request: a session's own `verify` loses to REQUESTS_CA_BUNDLE in the environment
        self.verify = ca_bundle if ca_bundle else True
        self.timeout, self.poll, self.patience = timeout, poll, patience
        self._directory: Optional[dict] = None
        self._nonce: Optional[str] = None
        numbers = self.key.public_key().public_numbers()
        self.jwk = {"crv": "P-256", "kty": "EC", "x": b64url(numbers.x.to_bytes(32, "big")),
                    "y": b64url(numbers.y.to_bytes(32, "big"))}
        thumb = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        self.thumbprint = b64url(hashlib.sha256(thumb).digest())

    # --- transport -------------------------------------------------------------------------
    @property
    def directory(self) -> dict:
        if self._directory is None:
            r = self.http.get(self.directory_url, timeout=self.timeout, verify=self.verify)
            if r.status_code != 200:
                raise AcmeError(f"ACME directory {self.directory_url}: HTTP {r.status_code}")
            self._directory = r.json()
        return self._directory

    def _fresh_nonce(self) -> str:
        r = self.http.head(self.directory["newNonce"], timeout=self.timeout, verify=self.verify)
        return r.headers["Replay-Nonce"]

    def _sign(self, url: str, payload) -> dict:
        protected = {"alg": "ES256", "nonce": self._nonce or self._fresh_nonce(), "url": url}
        if self.kid:
            protected["kid"] = self.kid
        else:
            protected["jwk"] = self.jwk
        self._nonce = None
        body = "" if payload is None else b64url(json.dumps(payload).encode())    # None: POST-as-GET
        head = b64url(json.dumps(protected).encode())
        der = self.key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return {"protected": head, "payload": body, "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}

    def post(self, url: str, payload=None) -> requests.Response:
        """A signed POST (payload None: POST-as-GET); a bad nonce is retried, any other problem raises."""
        for _ in range(5):
            r = self.http.post(url, data=json.dumps(self._sign(url, payload)), timeout=self.timeout,
                               verify=self.verify, headers={"Content-Type": "application/jose+json"})
            self._nonce = r.headers.get("Replay-Nonce")
            if r.status_code < 400:
                return r
            problem = _problem(r)
            if problem.get("type") != BAD_NONCE:
                raise AcmeError(f"{url}: HTTP {r.status_code} {problem.get('type', '')}: {problem.get('detail', r.text[:200])}",
                                problem.get("type", ""))
        raise AcmeError(f"{url}: the server rejected five nonces in a row")

    # --- the protocol ----------------------------------------------------------------------
    def register(self, email: str = "") -> str:
        """The account's URL (kid): made, or found again for this key."""
        payload = {"termsOfServiceAgreed": True}
        if email:
            payload["contact"] = [f"mailto:{email}"]
        self.kid = None
        r = self.post(self.directory["newAccount"], payload)
        self.kid = r.headers["Location"]
        return self.kid

    def new_order(self, host: str) -> dict:
        r = self.post(self.directory["newOrder"], {"identifiers": [{"type": "dns", "value": host}]})
        return {**r.json(), "url": r.headers["Location"]}

    def order(self, url: str) -> dict:
        return {**self.post(url).json(), "url": url}

    def http01(self, order: dict) -> List[Dict[str, str]]:
        """The HTTP-01 challenges of the order's authorizations still to be validated."""
        out = []
        for authz_url in order.get("authorizations", []):
            authz = self.post(authz_url).json()
            if authz.get("status") == "valid":
                continue
            found = [c for c in authz.get("challenges", []) if c.get("type") == "http-01"]
            if not found:
                raise AcmeError(f"{authz_url}: the server offers no http-01 challenge")
            c = found[0]
            out.append({"url": c["url"], "token": c["token"], "status": c.get("status", ""),
                        "key_authorization": f"{c['token']}.{self.thumbprint}"})
        return out

    def respond(self, challenge: dict) -> None:
        if challenge.get("status") in ("processing", "valid"):
            return
        self.post(challenge["url"], {})

    def _wait(self, url: str, until: tuple, what: str) -> dict:
        deadline = time.monotonic() + self.patience
        while True:
            state = self.order(url)
            if state.get("status") in until:
                return state
            if state.get("status") == "invalid":
                raise AcmeError(f"{what}: the order became invalid: {json.dumps(state.get('error') or state)[:300]}")
            if time.monotonic() > deadline:
                raise AcmeError(f"{what}: still {state.get('status')} after {self.patience:.0f} s")
            time.sleep(self.poll)

    def finish(self, order: dict, key_pem: str, host: str) -> str:
        """Wait for validation, finalize with a CSR for `host` and `key_pem`, return the chain PEM."""
        state = self._wait(order["url"], ("ready", "valid"), f"order for {host}")
        if state["status"] == "ready":
            self.post(state["finalize"], {"csr": b64url(csr_for(host, key_pem))})
            state = self._wait(order["url"], ("valid",), f"order for {host}")
        r = self.post(state["certificate"])
        return r.text


def _problem(r: requests.Response) -> dict:
    try:
        data = r.json()
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}
