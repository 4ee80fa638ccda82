"""Follow one of this node's KV prefixes that gatekeeper writes (gate records, container
actions) with a blocking query, and apply each answer on this host.

A host's agent answers HTTP on that host only, while gatekeeper may run on any host; so
gatekeeper writes what it wants done under gatekeeper/<kind>/<node>/<instance id>, and each
host's registrator, the one part that reaches both that agent and that engine, carries it out.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, Optional

from catalog.retry import backoff
from catalog.stores import InstanceStore, NodeRecordStore
from catalog.watch import Watch

log = logging.getLogger(__name__)


class NodeFollower:
    """Base of GateMirror and ActionRunner: the watch, the node name and the retried apply."""

    kind = ""                      # a word for logs: "gate records", "container actions"

    def __init__(self, instances: InstanceStore, node_records: NodeRecordStore, stopping: threading.Event,
                 wait: float = 30.0):
        self.instances, self.node_records = instances, node_records
        self.stopping, self.wait = stopping, wait
        self.node = ""
        self.records: Optional[Dict[str, object]] = None     # None until the first answer
        self.lock = threading.Lock()
        self.watch: Optional[Watch] = None

    def start(self) -> "NodeFollower":
        threading.Thread(target=self._run, name=self.kind.replace(" ", "-"), daemon=True).start()
        return self

    def _run(self) -> None:
        self.node = self._node_name()
        if self.stopping.is_set():
            return
        log.info("following gatekeeper's %s for node %s", self.kind, self.node)
        self.watch = Watch(f"{self.kind.replace(' ', '-')}-{self.node}", self._fetch, self._changed,
                           self.wait, self.stopping)
        self.watch.run()

    # any failure: without the node's name the follower would never start, and the host's gates,
    # actions and markers with it
    @backoff(max_wait=10.0, on=(Exception,), what="reading this agent's node name")
    def _node_name(self) -> str:
        if self.stopping.is_set():
            return ""
        return self.instances.node_name()

    def _fetch(self, index: int, wait: float):
        return self.fetch(self.node, index, wait)

    def _changed(self) -> None:
        with self.lock:
            self.records = self.watch.last_data
        try:
            self._apply_retrying()
        except Exception:                    # the watch must go on; the next answer retries
            log.exception("applying %s failed", self.kind)

    @backoff(max_wait=10.0, what="applying gatekeeper's records")
    def _apply_retrying(self) -> None:
        if not self.stopping.is_set():
            self.apply()

    def fetch(self, node: str, index: int, wait: float):
        raise NotImplementedError

    def apply(self) -> int:
        raise NotImplementedError
