"""The one way to reach Consul: where it is, with which token, how long to wait, and the
generic operations every store is built on (python-consul2 underneath, aiohttp for the
asynchronous blocking queries of catalog.mirror).

Nothing here knows what a key or a service means; the stores of catalog.stores do. Every call
has a timeout (python-consul2 has none by default); a blocking query gets a client of its own
whose timeout outlasts its wait. `ConsulError` and the exception classes re-exported here are
what callers catch.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple

import consul
import consul.base

# What callers catch: any refusal, and the kinds retry policies tell apart.
ConsulException = consul.base.ConsulException
ACLPermissionDenied = consul.base.ACLPermissionDenied
NotFound = consul.base.NotFound
BadRequest = consul.base.BadRequest


class ConsulError(ConsulException):
    """Consul refused a request; str() starts with the path and carries Consul's status code."""


def parse_address(addr: str) -> Tuple[str, str, int]:
    """'127.0.0.1:8500' or 'http://127.0.0.1:8500' -> (scheme, host, port)."""
    scheme, _, rest = addr.rpartition("://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Consul address {addr!r} is not HOST:PORT (for example 127.0.0.1:8500)")
    return scheme or "http", host, int(port)


def read_token(token_file: Optional[str] = None) -> Optional[str]:
    """A Consul ACL token from a file (the option, or CONSUL_HTTP_TOKEN_FILE) or from
    CONSUL_HTTP_TOKEN; never from the command line, never logged."""
    token_file = token_file or os.environ.get("CONSUL_HTTP_TOKEN_FILE")
    if token_file:
        try:
            with open(token_file) as f:
                return f.read().strip() or None
        except OSError as exc:
            raise ValueError(f"cannot read the Consul token file {token_file}: {exc.strerror}") from None
    return os.environ.get("CONSUL_HTTP_TOKEN") or None


class TokenFile:
    """A daemon's token as its file holds it now. Read again when Consul refuses the token in use
    (`refresh`): a token revoked and replaced in the file is taken up without a restart."""

    def __init__(self, client: "ConsulClient", path: Optional[str]):
        self.client, self.path = client, path

    def refresh(self) -> bool:
        """True when the file holds a token other than the one in use (now in use); False when
        there is no file, it cannot be read, or it holds the same token."""
        if not self.path:
            return False
        try:
            token = read_token(self.path)
        except ValueError:
            return False
        if token == self.client.token:
            return False
        self.client.use_token(token)
        return True


@dataclasses.dataclass(frozen=True)
class Tls:
    """How HTTPS to Consul is verified, from Consul's own variables as its CLI reads them:
    CONSUL_CACERT, the CA that signed the agents' HTTPS certificates (else the system's), and
    CONSUL_CLIENT_CERT with CONSUL_CLIENT_KEY, this client's own certificate for agents that
    verify incoming HTTPS. Read for https:// addresses only: plain HTTP ignores them."""
    ca: Optional[str] = None
    cert: Optional[Tuple[str, str]] = None

    @classmethod
    def for_scheme(cls, scheme: str) -> "Tls":
        """What to verify for an address of `scheme`: the variables for https, nothing for http."""
        return cls.from_env() if scheme == "https" else cls()

    @classmethod
    def from_env(cls) -> "Tls":
        ca = os.environ.get("CONSUL_CACERT") or None
        cert, key = os.environ.get("CONSUL_CLIENT_CERT"), os.environ.get("CONSUL_CLIENT_KEY")
        if bool(cert) != bool(key):
            raise ValueError("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together: set both or neither")
        for what, path in (("CONSUL_CACERT", ca), ("CONSUL_CLIENT_CERT", cert), ("CONSUL_CLIENT_KEY", key)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{what}={path}: no such file")
        return cls(ca, (cert, key) if cert else None)

    @property
    def verify(self):
        """For requests and python-consul2: the CA file, or True (the system's CAs)."""
        return self.ca or True

    def ssl_context(self):
        """For aiohttp."""
        import ssl
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(*self.cert)
        return context


def token_headers(token: Optional[str]) -> Dict[str, str]:
    return {"X-Consul-Token": token} if token else {}


def blocking_timeout(max_wait: float, timeout: float) -> float:
    """A blocking query's timeout: its wait, Consul's jitter (up to wait/16) and a normal timeout."""
    return max_wait * 1.1 + timeout


def _values(items) -> Dict[str, str]:
    return {i["Key"]: (i["Value"] or b"").decode() for i in items or []}


class ConsulClient:
    """One Consul agent reached with one token: KV, the agent's services and checks, catalog
    and health reads, sessions and locks."""

    def __init__(self, address: str = "127.0.0.1:8500", token: Optional[str] = None,
                 timeout: float = 5.0, max_wait: float = 30.0, tls: Optional[Tls] = None):
        scheme, host, port = parse_address(address)
        self.address = address
        self.max_wait = max_wait
        tls = tls or Tls.for_scheme(scheme)          # given: a program that knows its CA (a test) says it
        self._c = consul.Consul(host=host, port=port, scheme=scheme, token=token, timeout=timeout,
                                verify=tls.verify, cert=tls.cert)
        # Blocking queries hold the connection for up to `wait`; they get a client of their own
        # whose timeout outlasts the wait.
        self._blocking = consul.Consul(host=host, port=port, scheme=scheme, token=token,
                                       timeout=blocking_timeout(max_wait, timeout), verify=tls.verify, cert=tls.cert)
        # python-consul2 lets CONSUL_HTTP_TOKEN override an explicit token; the one given wins here.
        self._c.token = self._blocking.token = token
        self._token = token
        self._pass = threading.local()          # reads_of_one_pass's snapshot, per thread ...
        self._passes: List[tuple] = []          # ... and every thread's, for writes to reach
        self._passes_lock = threading.Lock()

    # --- the token itself --------------------------------------------------------------------
    def use_token(self, token: Optional[str]) -> None:
        """Speak with `token` from the next call on (every thread of this client)."""
        self._c.token = self._blocking.token = self._token = token

    @property
    def token(self) -> Optional[str]:
        return self._token

    def token_self(self) -> dict:
        """The token this client speaks with, as Consul describes it: accessor id, description and
        policies, never the secret. ACLPermissionDenied when Consul does not know the token."""
        info = self._c.acl.self() or {}
        return {"accessor": info.get("AccessorID", ""), "description": info.get("Description", ""),
                "policies": [p.get("Name", "") for p in info.get("Policies") or []]}

    # --- the cluster -----------------------------------------------------------------------
    def leader(self) -> str:
        return self._c.status.leader() or ""

    # --- KV --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reads_of_one_pass(self, prefixes: Tuple[str, ...]):
        """Within the block, on this thread only: a key under one of `prefixes` is answered from
        one recursive read of each prefix, made on entry, instead of one request per key (a pass
        over a thousand services reads each one's policy several times). A key written through
        this client meanwhile, from any thread, is read from Consul again; other threads always
        read Consul.

        The view is registered before its reads, and a write marks its key both before it is
        sent and once Consul has answered: a write that another thread makes while the
        snapshot is being read is never answered from the snapshot's older value."""
        snapshot: Dict[str, Tuple[int, Optional[str]]] = {}
        view = (tuple(prefixes), snapshot, set())
        with self._passes_lock:
            self._passes.append(view)
        try:
            for prefix in prefixes:
                _, items = self._c.kv.get(prefix, recurse=True)
                for item in items or []:
                    value = item["Value"]
                    snapshot[item["Key"]] = (int(item["ModifyIndex"]), value.decode() if value is not None else "")
            self._pass.view = view
            yield
        finally:
            self._pass.view = None
            with self._passes_lock:
                self._passes = [v for v in self._passes if v is not view]

    def _from_pass(self, key: str) -> Optional[Tuple[int, Optional[str]]]:
        view = getattr(self._pass, "view", None)
        if view is None or not key.startswith(view[0]):
            return None
        with self._passes_lock:
            if key in view[2]:
                return None
            return view[1].get(key, (0, None))

    @contextlib.contextmanager
    def _writing(self, keys=(), prefix: Optional[str] = None):
        """Around a write: its keys (and, for `prefix`, every key under it a view holds) are
        marked in every pass's view before it is sent and again after Consul answered (a view
        registered while it was in flight sees it too)."""
        def mark() -> None:
            with self._passes_lock:
                for view in self._passes:
                    view[2].update(keys)
                    if prefix is not None:
                        view[2].update(k for k in list(view[1]) if k.startswith(prefix))
        mark()
        try:
            yield
        finally:
            mark()

    def kv_get(self, key: str) -> Tuple[int, Optional[str]]:
        """(ModifyIndex, value); (0, None) when the key is absent."""
        kept = self._from_pass(key)
        if kept is not None:
            return kept
        _, item = self._c.kv.get(key)
        if item is None:
            return 0, None
        value = item["Value"]
        return int(item["ModifyIndex"]), value.decode() if value is not None else ""

    def kv_put(self, key: str, value: str, cas: Optional[int] = None) -> bool:
        """Write `value`; with `cas` only if the key's ModifyIndex is still `cas` (0: absent)."""
        with self._writing((key,)):
            return bool(self._c.kv.put(key, value, cas=cas))

    def kv_delete(self, key: str, cas: Optional[int] = None) -> bool:
        """Delete `key`; with `cas` only if its ModifyIndex is still `cas`."""
        with self._writing((key,)):
            return bool(self._c.kv.delete(key, cas=cas))

    def kv_txn(self, operations: List[Tuple[str, str, Optional[str], Optional[int]]]) -> bool:
        """Several KV writes at once, all or none: (verb, key, value, index) each, verb "set",
        "cas" (only while the key's ModifyIndex is `index`, 0: absent), "delete" or "delete-cas".
        False when a check-and-set found the key changed."""
        ops = []
        for verb, key, value, index in operations:
            kv = {"Verb": verb, "Key": key}
            if value is not None:
                kv["Value"] = base64.b64encode(value.encode()).decode()
            if index is not None:
                kv["Index"] = index
            ops.append({"KV": kv})
        try:
            with self._writing([key for _, key, _, _ in operations]):
                self._c.txn.put(ops)
            return True
        except consul.base.ClientError as exc:        # 409: rolled back; its errors say why
            if str(exc).startswith("409") and "permission denied" not in str(exc).lower():
                return False
            raise ConsulError(f"PUT /v1/txn: {exc}") from None

    def kv_delete_present(self, keys: List[str]) -> List[str]:
        """Delete those of `keys` that exist; return them."""
        present = [k for k in keys if self.kv_get(k)[1] is not None]
        for key in present:
            self.kv_delete(key)
        return present

    def kv_delete_tree(self, prefix: str) -> None:
        with self._writing(prefix=prefix):
            self._c.kv.delete(prefix, recurse=True)

    def kv_keys(self, prefix: str) -> List[str]:
        _, keys = self._c.kv.get(prefix, keys=True)
        return list(keys or [])

    def kv_list(self, prefix: str) -> Dict[str, str]:
        _, items = self._c.kv.get(prefix, recurse=True)
        return _values(items)

    def kv_list_indexed(self, prefix: str) -> Tuple[int, Dict[str, str]]:
        """(the prefix's index, every key under it with its value): the start of a blocking query."""
        idx, items = self._c.kv.get(prefix, recurse=True)
        return int(idx), _values(items)

    def wait_kv(self, prefix: str, index: int, wait: float) -> Tuple[int, Dict[str, str]]:
        """Blocking query on every key under `prefix` with its value."""
        idx, items = self._blocking.kv.get(prefix, recurse=True, index=index or None,
                                           wait=f"{int(wait)}s")
        return int(idx), _values(items)

    def wait_keys(self, prefix: str, index: int, wait: float) -> int:
        """Block until something under `prefix` changes (a key written or deleted) or `wait`
        seconds pass; return the prefix's index to pass next time (0: return at once). Lists
        keys only, so a prefix holding much history costs little."""
        idx, _ = self._blocking.kv.get(prefix, keys=True, index=index or None,
                                       wait=f"{max(1, int(wait * 1000))}ms")
        return int(idx)

    # --- this agent: its services and checks -------------------------------------------------
    def register_service(self, definition: dict) -> None:
        self.put("/v1/agent/service/register", json.dumps(definition))

    def deregister_service(self, service_id: str) -> None:
        self.put(f"/v1/agent/service/deregister/{service_id}")

    def set_check(self, check_id: str, passing: bool, note: str) -> None:
        """Pass or fail a TTL check of this agent, with `note` as its output."""
        self.put(f"/v1/agent/check/{'pass' if passing else 'fail'}/{check_id}", params=[("note", note)])

    def agent_services(self) -> Dict[str, dict]:
        return self._c.agent.services()

    def agent_checks(self) -> Dict[str, dict]:
        return self._c.agent.checks()

    def node_name(self) -> str:
        """The name of the node this agent is (the host it stands for)."""
        return self._c.agent.self()["Config"]["NodeName"]

    def put(self, path: str, data: str = "", params: Iterable = ()) -> None:
        """A PUT to the agent's HTTP API; a refusal raises ConsulError naming the path."""
        try:
            self._c.http.put(consul.base.CB.bool(), path=path, params=list(params), data=data,
                             headers=token_headers(self._token))
        except consul.base.ConsulException as exc:
            raise ConsulError(f"PUT {path}: {exc}") from None

    # --- the catalog and health ----------------------------------------------------------------
    def catalog_services(self) -> Dict[str, list]:
        _, services = self._c.catalog.services()
        return services

    def health_service(self, service: str) -> list:
        """A /v1/health/service/NAME answer: every instance with its checks, any status."""
        _, entries = self._c.health.service(service)
        return entries

    def node_services(self, node: str) -> Dict[str, dict]:
        """Every service instance registered on one node (/v1/catalog/node/NODE), by id."""
        _, answer = self._c.catalog.node(node)
        return (answer or {}).get("Services") or {}

    def health_state(self) -> List[dict]:
        """Every check in the catalog, any status (/v1/health/state/any)."""
        return self._c.health.state("any")[1]

    def nodes(self) -> List[dict]:
        """The catalog's nodes (one per agent that joined)."""
        return self._c.catalog.nodes()[1]

    def node_checks(self, node: str) -> List[dict]:
        """Every check on one node, its serf health among them."""
        return self._c.health.node(node)[1]

    def service_checks(self, service: str) -> List[dict]:
        return self._c.health.checks(service)[1]

    def peers(self) -> List[str]:
        """The servers in the Raft quorum."""
        return self._c.status.peers()

    def kv_entry(self, key: str) -> Optional[dict]:
        """A key's whole entry (its Session among the fields), or None."""
        return self._c.kv.get(key)[1]

    def wait_health_service(self, service: str, index: int, wait: float) -> Tuple[int, list]:
        idx, entries = self._blocking.health.service(service, index=index or None, wait=f"{int(wait)}s")
        return int(idx), entries or []

    def wait_health_state(self, index: int, wait: float) -> Tuple[int, list]:
        idx, checks = self._blocking.health.state("any", index=index or None, wait=f"{int(wait)}s")
        return int(idx), checks

    # --- sessions and locks ----------------------------------------------------------------
    def session_create(self, name: str, ttl: int = 10, lock_delay: int = 5) -> str:
        return self._c.session.create(name=name, ttl=ttl, lock_delay=lock_delay, behavior="release")

    def session_renew(self, session: str) -> bool:
        return self._c.session.renew(session) is not None

    def session_destroy(self, session: str) -> None:
        self._c.session.destroy(session)

    def acquire(self, key: str, session: str, value: str) -> bool:
        return bool(self._c.kv.put(key, value, acquire=session))

    def release(self, key: str, session: str) -> None:
        self._c.kv.put(key, "", release=session)


class AsyncConsul:
    """Blocking queries over one aiohttp session, for many idle queries on one thread:

        async with AsyncConsul(address, token, wait=300) as c:
            index, data = await c.blocking_get("/v1/catalog/services", {}, index)

    With `max_stale` (seconds), any Consul server may answer (`?stale`: the reads spread over
    the servers instead of all going to the leader), and an answer from a server that has not
    heard from the leader for longer than that, or knows of none, is asked again of the leader
    (consul-template's max_stale).
    """

    def __init__(self, address: str, token: Optional[str], wait: float = 30.0, timeout: float = 5.0,
                 max_stale: Optional[float] = None):
        scheme, host, port = parse_address(address)
        self.base = f"{scheme}://{host}:{port}"
        self.headers = token_headers(token)
        self.wait, self.timeout, self.max_stale = wait, timeout, max_stale
        self.tls = Tls.for_scheme(scheme)
        self._session = None
        self.stale_answers = self.leader_answers = 0     # what answered: any server, or the leader

    async def __aenter__(self) -> "AsyncConsul":
        import aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self.tls.ssl_context() if self.base.startswith("https:")
                                           else None),
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=blocking_timeout(self.wait, self.timeout)))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def blocking_get(self, path: str, params: dict, index: int) -> Tuple[int, Any]:
        """(X-Consul-Index, the JSON answer); an empty KV prefix answers []; an error status
        raises ConsulError."""
        query = {**params, "wait": f"{int(self.wait)}s"}
        if index:
            query["index"] = str(index)
        if self.max_stale is not None:
            new_index, data, fresh = await self._get(path, {**query, "stale": ""})
            if fresh:
                self.stale_answers += 1
                return new_index, data
        new_index, data, _ = await self._get(path, query)
        self.leader_answers += 1
        return new_index, data

    async def _get(self, path: str, query: dict) -> Tuple[int, Any, bool]:
        """(index, answer, whether it is within max_stale of the leader)."""
        async with self._session.get(self.base + path, params=query) as resp:
            new_index = int(resp.headers.get("X-Consul-Index", "0") or 0)
            fresh = (resp.headers.get("X-Consul-KnownLeader", "true") == "true"
                     and int(resp.headers.get("X-Consul-LastContact", "0") or 0) <= (self.max_stale or 0) * 1000)
            if resp.status == 404:                 # an empty KV prefix
                return new_index, [], fresh
            if resp.status != 200:
                raise ConsulError(f"{path}: {resp.status} {(await resp.text())[:200]}")
            return new_index, await resp.json(content_type=None), fresh
