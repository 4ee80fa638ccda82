"""TLS certificates in Consul KV, which every proxy serves: each name's chain and source under
certificates/chains/<name> (readable by gatekeeper for `status`), its private key under
certificates/keys/<name> (proxy-reloader and the operator only). The two are written and removed
together in one transaction, so no reader sees a chain with another certificate's key."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Dict, Optional

from ..certificates import Certificate, CertificateRefused, check_name, parse
from ..consul_client import ConsulClient
from ..kv_layout import CERTIFICATE_CHAINS, CERTIFICATE_KEYS, CERTIFICATES


@dataclass(frozen=True)
class StoredCertificate:
    """One name's entry as KV holds it, before it is checked."""
    name: str
    chain: str
    key: Optional[str]            # None: this token may not read keys, or the key is missing
    source: str
    added: float


def entries_from_kv(items: Dict[str, str]) -> Dict[str, StoredCertificate]:
    """certificates/ keys and values (one recursive read) -> each name's entry; a chain that is not
    this layout's JSON is kept out (the reader reports it when it checks)."""
    out = {}
    for key, raw in items.items():
        if not key.startswith(CERTIFICATE_CHAINS):
            continue
        name = key[len(CERTIFICATE_CHAINS):]
        try:
            meta = json.loads(raw)
            chain, source, added = str(meta["cert"]), str(meta["source"]), float(meta.get("added", 0))
        except (ValueError, KeyError, TypeError):
            chain, source, added = raw, "operator", 0.0
        out[name] = StoredCertificate(name, chain, items.get(CERTIFICATE_KEYS + name), source, added)
    return out


class CertificateStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def items(self) -> Dict[str, str]:
        """Every key under certificates/ with its value, as the proxies' watch reads them."""
        return self.consul.kv_list(CERTIFICATES)

    def chains(self) -> Dict[str, str]:
        """The chains alone (what gatekeeper's token may read): never a key."""
        return self.consul.kv_list(CERTIFICATE_CHAINS)

    def all(self) -> Dict[str, StoredCertificate]:
        return entries_from_kv(self.items())

    def index_of(self, name: str) -> int:
        """The chain's ModifyIndex (0: no certificate of that name), for `put`'s check-and-set."""
        return self.consul.kv_get(CERTIFICATE_CHAINS + name)[0]

    def put(self, cert: Certificate, cas: Optional[int] = None) -> bool:
        """Write a checked certificate; with `cas` only if the chain's ModifyIndex is still
        `cas` (0: no certificate of that name yet). False when another writer came first."""
        meta = json.dumps({"cert": cert.chain, "source": cert.source, "added": round(time.time(), 3)},
                          sort_keys=True)
        if cas is None:
            ops = [("set", CERTIFICATE_CHAINS + cert.name, meta, None)]
        else:
            ops = [("cas", CERTIFICATE_CHAINS + cert.name, meta, cas)]
        ops.append(("set", CERTIFICATE_KEYS + cert.name, cert.key, None))
        return self.consul.kv_txn(ops)

    def remove(self, name: str) -> bool:
        """Remove a name's certificate and key; False when there was none."""
        check_name(name)
        if self.consul.kv_get(CERTIFICATE_CHAINS + name)[1] is None:
            return False
        self.consul.kv_txn([("delete", CERTIFICATE_CHAINS + name, None, None),
                            ("delete", CERTIFICATE_KEYS + name, None, None)])
        return True


def checked(entry: StoredCertificate) -> Certificate:
    """A stored entry parsed and checked (CertificateRefused says why it cannot be served)."""
    if entry.key is None:
        raise CertificateRefused(f"certificate {entry.name} has no private key in Consul "
                                 f"({CERTIFICATE_KEYS}{entry.name}); add it again with proxy-reloader cert add")
    return parse(entry.name, entry.chain, entry.key, entry.source)
