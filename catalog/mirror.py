"""A live copy of what the proxy routes by: every service's registrator-made instances with
their checks, and the routing policies, kept by Consul blocking queries.

One blocking query per service, as consul-template keeps one per dependency: Consul wakes a
service's query only when that service changes, so one instance change costs one small read
whatever the catalog's size. One query on the service list starts and stops them; one on the
policies' KV prefix follows promotions, and one on the certificates' prefix follows certificates. Each follows consul-template's rules (skip an unchanged
index or unchanged data, start over when the index goes backwards, back off on errors).

The queries run as asyncio tasks on a thread of their own (aiohttp): a thousand services are a
thousand idle connections, not a thousand threads. Consul limits HTTP connections per client
address (`limits.http_max_conns_per_client`, 200 by default); the stack's Consul raises it.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import random
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from .consul_client import AsyncConsul
from .stores.instances import registered_from_health
from .kv_layout import CERTIFICATES, POLICIES
from .model import RegisteredInstance
from .watch import IndexTracker

log = logging.getLogger(__name__)

# How long a query waits for a change. Consul answers a query that waits it out in full, so with
# one query per service, every proxy costs (services / WAIT) full answers a second doing nothing:
# at 30 s, 20 proxies of 100 services made more than half of the servers' answers while churning.
WAIT = 300.0
# Any server may answer, unless it has not heard from the leader for this long (seconds).
MAX_STALE = 2.0

# service -> (its instances, or None when the catalog no longer lists it; its policy's raw JSON)
Snapshot = Dict[str, Tuple[Optional[List[RegisteredInstance]], Optional[str]]]


class CatalogMirror:
    def __init__(self, address: str, token: Optional[str], on_change: Callable[[], None],
                 wait: float = WAIT, timeout: float = 5.0, max_stale: Optional[float] = MAX_STALE):
        self.consul = AsyncConsul(address, token, wait, timeout, max_stale)
        self.on_change, self.wait, self.timeout = on_change, wait, timeout
        self._lock = threading.Lock()
        self._instances: Dict[str, List[RegisteredInstance]] = {}
        self._policies: Dict[str, str] = {}
        self._certificates: Optional[Dict[str, str]] = None    # certificates/ as last answered, until taken
        self._changed: Set[str] = set()
        self._pending: Set[str] = set()           # listed, first answer not in yet
        self._listed = self._policies_read = False
        self.ready = threading.Event()            # every listed service read once, and the policies
        self.disrupted_at = 0.0                   # monotonic time of the last failed query or reset
        self.errors = 0
        self.answers = 0                          # blocking-query answers received (changed or not)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None

    # --- what the runner reads -------------------------------------------------------------
    def take(self) -> Snapshot:
        """The services that changed since the last call, with their current data."""
        with self._lock:
            changed, self._changed = self._changed, set()
            return {s: (self._instances.get(s), self._policies.get(s)) for s in changed}

    def take_certificates(self) -> Optional[Dict[str, str]]:
        """Every key under certificates/ with its value, when it changed since the last call; else None."""
        with self._lock:
            items, self._certificates = self._certificates, None
            return items

    def everything(self) -> Snapshot:
        with self._lock:
            self._changed = set()
            names = set(self._instances) | set(self._policies)
            return {s: (self._instances.get(s), self._policies.get(s)) for s in names}

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> "CatalogMirror":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="catalog-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout=5)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with self.consul:
            self._tasks: Dict[str, asyncio.Task] = {}
            loops = [asyncio.create_task(self._follow("services", "/v1/catalog/services", {}, self._on_services)),
                     asyncio.create_task(self._follow("policies", "/v1/kv/" + POLICIES, {"recurse": ""},
                                                      self._on_policies)),
                     asyncio.create_task(self._follow("certificates", "/v1/kv/" + CERTIFICATES, {"recurse": ""},
                                                      self._on_certificates, disrupts=False))]
            await self._stop.wait()
            for t in loops + list(self._tasks.values()):
                t.cancel()
            await asyncio.gather(*loops, *self._tasks.values(), return_exceptions=True)

    # --- one blocking-query loop -----------------------------------------------------------
    async def _follow(self, name: str, path: str, params: dict, handle, disrupts: bool = True) -> None:
        """Follow one blocking query; `disrupts`: whether its failures count as a Consul disruption
        (during which the proxy keeps routes that vanish, see proxy_reloader.runner)."""
        tracker, last, delay, failing = IndexTracker(), object(), 0.2, False
        while True:
            try:
                index, data = await self.consul.blocking_get(path, params, tracker.index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:               # unreachable, restarted, refusing: retry
                self.errors += 1
                if disrupts:
                    self.disrupted_at = time.monotonic()
                if not failing:
                    log.warning("watch %s: %s: %s; retrying with back-off", name, type(exc).__name__, exc)
                failing = True
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 10.0)
                continue
            self.answers += 1
            if failing:
                log.info("watch %s: Consul answers again", name)
            failing, delay = False, 0.2
            if index < tracker.index and disrupts:
                self.disrupted_at = time.monotonic()       # Consul restarted or restored a snapshot
            if tracker.advance(index) and data != last:
                last = data
                handle(name, data)

    # --- what each answer means ------------------------------------------------------------
    def _on_services(self, _, data: dict) -> None:
        listed = set(data or {})
        with self._lock:
            for gone in set(self._tasks) - listed:
                self._tasks.pop(gone).cancel()
                self._instances.pop(gone, None)
                self._pending.discard(gone)
                self._changed.add(gone)
            for new in listed - set(self._tasks):
                self._pending.add(new)
                self._tasks[new] = asyncio.get_running_loop().create_task(
                    self._follow(f"service {new}", f"/v1/health/service/{new}", {},
                                 lambda _, entries, service=new: self._on_service(service, entries)))
            self._listed = True
        self._notify()

    def _on_service(self, service: str, entries: list) -> None:
        try:
            found = registered_from_health(entries or [])
        except (KeyError, TypeError, ValueError) as exc:
            log.error("service %s: unreadable health answer from Consul (%s); treated as no instance", service, exc)
            found = []
        with self._lock:
            if service not in self._tasks:
                return                                      # removed meanwhile
            self._instances[service] = found
            self._pending.discard(service)
            self._changed.add(service)
        self._notify()

    def _on_policies(self, _, items: list) -> None:
        policies = {}
        for item in items or []:
            service = item["Key"][len(POLICIES):]
            if service and "/" not in service:
                policies[service] = base64.b64decode(item.get("Value") or "").decode(errors="replace")
        with self._lock:
            for s in set(policies) | set(self._policies):
                if policies.get(s) != self._policies.get(s):
                    self._changed.add(s)
            self._policies = policies
            self._policies_read = True
        self._notify()

    def _on_certificates(self, _, items: list) -> None:
        # Not part of `ready`: routing never waits for certificates (a proxy whose token may not
        # read them routes plain HTTP as before, and the watch's errors say why).
        with self._lock:
            self._certificates = {item["Key"]: base64.b64decode(item.get("Value") or "").decode(errors="replace")
                                  for item in items or []}
        if self.ready.is_set():
            self.on_change()

    def _notify(self) -> None:
        if not self.ready.is_set() and self._listed and self._policies_read and not self._pending:
            self.ready.set()
        if self.ready.is_set():
            self.on_change()
