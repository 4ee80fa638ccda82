"""Certificates from an ACME CA (Let's Encrypt, or any RFC 8555 server) for routed hosts, with
HTTP-01 answered by every proxy. One issuer at a time: each proxy-reloader started with
--acme-directory runs one, and the one holding `certificates/acme/leader` (catalog.leader) orders.

What it orders: each exact host name of a route (a wildcard cannot be validated over HTTP) whose
certificate is not the operator's (a folder's, or `proxy-reloader cert add`'s), when it has none
or only the local CA's, when its ACME certificate has lived two thirds of its life, or when
`proxy-reloader cert renew HOST` asks. Everything it needs to go on lives in Consul, so a leader
killed in the middle of an order leaves it to the next one, which resumes the same order:

    certificates/acme/account            the account key, shared by every issuer
    certificates/acme/orders/<host>      the order under way and its certificate key
    certificates/acme/challenges/<token> the answer every proxy serves at /.well-known/acme-challenge/
    certificates/acme/renew/<host>       a renewal asked for

The certificate is written like any other (catalog.stores.certificates, source `acme`), with
check-and-set, and every proxy serves it within a second.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import Dict, Iterable, Optional

from catalog.certificates import Certificate, CertificateRefused, lookup_names, parse, renew_due
from catalog.consul_client import ConsulClient
from catalog.kv_layout import ACME_ACCOUNT, ACME_CHALLENGES, ACME_LEADER, ACME_ORDERS, ACME_RENEW
from catalog.leader import LeaderLock
from catalog.retry import TRANSIENT
from catalog.stores import LockStore
from catalog.stores.certificates import CertificateStore

from .acme_client import ACCOUNT_GONE, AcmeClient, AcmeError, new_account_key

log = logging.getLogger(__name__)

OPERATORS = ("files", "operator")       # certificates the issuer never replaces
FIRST_RETRY, LAST_RETRY = 5.0, 900.0    # a failing host is tried again after 5 s, doubling up to 15 min


class AcmeIssuer:
    def __init__(self, consul: ConsulClient, directory: str, email: str = "", ca_bundle: Optional[str] = None,
                 probe: str = "", identity: str = "proxy-reloader", interval: float = 1.0):
        self.consul, self.store = consul, CertificateStore(consul)
        self.directory, self.email, self.ca_bundle = directory, email, ca_bundle
        self.probe = probe.replace("0.0.0.0:", "127.0.0.1:")     # this proxy's plain listener
        self.lock = LeaderLock(LockStore(consul), identity=f"acme-issuer@{identity}", ttl=10, lock_delay=1,
                               key=ACME_LEADER)
        self.interval = interval
        self.hosts: frozenset = frozenset()
        self.serving: Dict[str, Certificate] = {}
        self.errors: Dict[str, str] = {}
        self.issued = 0
        # what this issuer wrote, until the runner's view (fed by the KV watch) has it too, for 30 s
        # at most (a certificate removed after that is ordered again)
        self.recent: Dict[str, tuple] = {}
        self.retry_at: Dict[str, tuple] = {}          # host -> (monotonic time of the next try, the delay)
        self._client: Optional[AcmeClient] = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self._threads = []

    # --- what the runner tells it ----------------------------------------------------------
    def update(self, hosts: Iterable[str], serving: Dict[str, Certificate]) -> None:
        self.hosts = frozenset(h for h in hosts if h and not h.startswith("*."))
        self.serving = dict(serving)
        self._wake.set()

    def status(self) -> dict:
        return {"directory": self.directory, "leader": self.lock.is_leader.is_set(), "issued": self.issued,
                "errors": dict(self.errors)}

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> "AcmeIssuer":
        self._threads = [threading.Thread(target=self._run, name="acme-issuer", daemon=True),
                         threading.Thread(target=self._keep_lock, name="acme-issuer-lock", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)
        self.lock.release()

    def _keep_lock(self) -> None:
        """Renew the session every 3 s (TTL 10 s), leading or waiting to: an order outlasts the TTL.
        An issuer whose ordering thread is gone steps down, so another one orders."""
        while not self._stop.wait(3.0):
            if not self._threads[0].is_alive():
                self.lock.release()
                return
            if self.lock.session is not None:
                self.lock.renew()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.lock.is_leader.is_set() or self.lock.try_acquire():
                    self.step()
            except TRANSIENT as exc:
                log.warning("ACME issuer: Consul: %s", exc)
            except Exception:                        # a bug must not leave a leader that orders nothing
                log.exception("ACME issuer: round failed; trying again in 10 s")
                self._stop.wait(10.0)
            self._wake.wait(self.interval)
            self._wake.clear()

    # --- one round -------------------------------------------------------------------------
    def operators(self, host: str) -> Optional[str]:
        """The operator's certificate (a folder's or `cert add`'s, exact or wildcard) that serves `host`."""
        for name in lookup_names(host)[:-1]:
            cert = self.serving.get(name)
            if cert is not None and cert.source in OPERATORS:
                return name
        return None

    def due(self) -> Dict[str, str]:
        """host -> why it is ordered now."""
        renew = {k[len(ACME_RENEW):] for k in self.consul.kv_keys(ACME_RENEW)} - {""}
        under_way = {k[len(ACME_ORDERS):] for k in self.consul.kv_keys(ACME_ORDERS)} - {""}
        out = {}
        now = time.monotonic()
        for host in sorted(self.hosts | renew | under_way):
            if self.retry_at.get(host, (0.0,))[0] > now:
                continue                                  # failed lately: backing off
            theirs = self.operators(host)
            if theirs is not None:                        # the operator's certificate is never replaced
                if host in renew or host in under_way:
                    log.info("ACME issuer: %s is served by the operator's certificate %s: no order", host, theirs)
                    self._forget(host)
                continue
            current = self.serving.get(host)
            mine, written = self.recent.get(host, (None, 0.0))
            if mine is not None and (now - written > 30 or (current is not None and current.not_after >= mine.not_after)):
                del self.recent[host]                     # the watch brought it back, or it was removed since
            elif mine is not None:
                current = mine
            if host in under_way:
                out[host] = "an order under way"
            elif host in renew:
                out[host] = "renewal asked for"
            elif current is None or current.source == "local-ca":
                out[host] = "no certificate" if current is None else "only the local CA's certificate"
            elif current.source == "acme" and renew_due(current):
                out[host] = "two thirds of its life gone"
        return out

    def step(self) -> int:
        """Order what is due, one host after the other, while this issuer leads; the number issued."""
        done = 0
        for host, why in self.due().items():
            if self._stop.is_set() or not self.lock.is_leader.is_set():
                break
            try:
                self.issue(host, why)
                self.errors.pop(host, None)
                self.retry_at.pop(host, None)
                done += 1
            except (AcmeError, CertificateRefused) as exc:
                self._failed(host, str(exc))
                self._forget(host, keep_renewal=True)     # a failed order: the next try starts afresh
                if isinstance(exc, AcmeError) and exc.problem in ACCOUNT_GONE:
                    self._client = None     # the server forgot the account (a reset CA): register again
            except (OSError, ValueError) as exc:
                self._failed(host, f"ACME server unreachable or unreadable: {exc}")
                self._client = None         # a server back from a restart may know the account no more
        return done

    def _failed(self, host: str, error: str) -> None:
        delay = min(self.retry_at.get(host, (0.0, FIRST_RETRY / 2))[1] * 2, LAST_RETRY)
        self.retry_at[host] = (time.monotonic() + delay, delay)
        if self.errors.get(host) != error:
            log.error("ACME issuer: %s: %s (trying again in %.0f s, then less often)", host, error, delay)
        self.errors[host] = error

    def _forget(self, host: str, keep_renewal: bool = False) -> None:
        """Drop the host's order under way, the challenge answers it published, and its renewal request."""
        _, raw = self.consul.kv_get(ACME_ORDERS + host)
        tokens = (json.loads(raw).get("tokens") or []) if raw else []
        keys = [ACME_ORDERS + host] + [ACME_CHALLENGES + t for t in tokens]
        if not keep_renewal:
            keys.append(ACME_RENEW + host)
        for key in keys:
            self.consul.kv_delete(key)

    def client(self) -> AcmeClient:
        """The shared account (made once, kept in Consul), registered with the ACME server."""
        if self._client is None:
            _, raw = self.consul.kv_get(ACME_ACCOUNT)
            account = json.loads(raw) if raw else None
            if not account or account.get("directory") != self.directory:
                account = {"directory": self.directory, "key": new_account_key()}
                if not self.consul.kv_put(ACME_ACCOUNT, json.dumps(account), cas=0 if not raw else None):
                    account = json.loads(self.consul.kv_get(ACME_ACCOUNT)[1])
            client = AcmeClient(self.directory, account["key"], self.ca_bundle)
            client.register(self.email)
            self._client = client
        return self._client

    def issue(self, host: str, why: str) -> Certificate:
        client = self.client()
        index = self.store.index_of(host)
        _, raw = self.consul.kv_get(ACME_ORDERS + host)
        record = json.loads(raw) if raw else None
        if record:
            order = client.order(record["url"])
            log.info("ACME issuer: %s: resuming order %s (%s)", host, record["url"], order.get("status"))
        else:
            record = {"key": new_account_key()}          # the certificate's key: an EC P-256 key as well
            order = client.new_order(host)
            record["url"] = order["url"]
            self.consul.kv_put(ACME_ORDERS + host, json.dumps(record))
            log.info("ACME issuer: %s: ordering (%s)", host, why)
        tokens = record.setdefault("tokens", [])
        for challenge in client.http01(order):
            if challenge["token"] not in tokens:            # the record names what to clean up after
                tokens.append(challenge["token"])
                self.consul.kv_put(ACME_ORDERS + host, json.dumps(record))
            self.consul.kv_put(ACME_CHALLENGES + challenge["token"], challenge["key_authorization"])
            self._until_answered(challenge)
            client.respond(challenge)
        chain = client.finish(order, record["key"], host)
        cert = parse(host, chain, record["key"], "acme")
        if not self.store.put(cert, cas=index):
            log.info("ACME issuer: %s: another certificate was written meanwhile; it stays", host)
        else:
            self.issued += 1
            self.recent[host] = (cert, time.monotonic())
            log.info("ACME issuer: %s: certificate issued by %s, valid until %s", host, cert.issuer,
                     cert.summary()["not_after"])
        self._forget(host)
        return cert

    def _until_answered(self, challenge: dict, timeout: float = 10.0) -> None:
        """Until this proxy answers the challenge (every proxy gets it by the same watch)."""
        if not self.probe:
            time.sleep(1.0)
            return
        url = f"http://{self.probe}/.well-known/acme-challenge/{challenge['token']}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.read().decode() == challenge["key_authorization"]:
                        time.sleep(0.2)               # the other proxies, a moment behind at most
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AcmeError(f"this proxy did not answer the challenge at {url} within {timeout:.0f} s")
