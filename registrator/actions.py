"""Carry out gatekeeper's container actions on this host's engine.

Gatekeeper may run on any host, and a container can be stopped, started, removed, restarted or
killed only through the engine it runs on. So gatekeeper writes what it wants done (stop the
old version after a drain, start it again for a rollback, remove it once it is too many
versions old, restart an unhealthy container, kill a Swarm task so Swarm replaces it) under
gatekeeper/actions/<node>/<instance id>, and the registrator of that node carries it out.

Each action is done once per record (a record written again is asked again), only to a
container on this node (a stop, restart or kill: one this registrator registered; a start: one
that is not registered; a remove: either), and only to the run of it the record names (id and
start time): a container restarted or replaced since is left alone, so carrying out a record twice,
after a registrator restart say, changes nothing.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict

from catalog.model import ContainerAction, Instance
from catalog.stores import InstanceStore, NodeRecordStore

from .follow import NodeFollower

log = logging.getLogger(__name__)


Engine = Callable[[str, str, str, int], str]    # (action, container id, started, timeout) -> what happened


def to_do(records: Dict[str, ContainerAction], done: Dict[str, float]) -> Dict[str, ContainerAction]:
    """The records not carried out yet: new ones, and ones written again since."""
    return {iid: r for iid, r in records.items() if done.get(iid) != r.written}


def registered_here(iid: str, record: ContainerAction, instances: Dict[str, Instance]) -> bool:
    """The record names an instance this registrator registered, and that instance's container."""
    inst = instances.get(iid)
    return inst is not None and inst.container_id == record.container_id


def for_here(iid: str, record: ContainerAction, instances: Dict[str, Instance]) -> bool:
    """Whether this registrator takes the record on: a stop, restart or kill for an instance it
    registered; a start for a container that is not registered (stopped by a drain, it left the
    catalog); a remove whether or not it still is (its drain's stop may be under way). The
    engine then acts only on the record's run (DockerSource.carry_out)."""
    if record.action == "remove":
        return True
    if record.action == "start":
        inst = instances.get(iid)
        return inst is None or inst.container_id != record.container_id
    return registered_here(iid, record, instances)


class ActionRunner(NodeFollower):
    """Follows this node's container actions and carries each out once on the local engine."""

    kind = "container actions"

    def __init__(self, instances: InstanceStore, node_records: NodeRecordStore, engine: Engine, registered_by: str,
                 stopping: threading.Event, wait: float = 30.0):
        super().__init__(instances, node_records, stopping, wait)
        self.engine, self.registered_by = engine, registered_by
        self.done: Dict[str, float] = {}       # instance id -> `written` of the record taken on
        # instance id -> held while an action on its container is carried out: a newer record
        # waits for it (a rollback's start asked while the drain's stop still waits out the
        # container's shutdown would find it running, do nothing, and be lost)
        self.serial: Dict[str, threading.Lock] = {}

    def fetch(self, node: str, index: int, wait: float):
        return self.node_records.actions(node, index, wait)

    def apply(self) -> int:
        """Start every action not taken on yet, each on its own thread (a stop waits for the
        container's own shutdown; actions on one instance one after the other); how many were
        started. A record for an instance not (or not yet: a sync is under way) registered here
        waits for the next answer or sync."""
        with self.lock:
            if self.records is None:
                return 0
            self.done = {iid: w for iid, w in self.done.items() if iid in self.records}
            self.serial = {iid: s for iid, s in self.serial.items() if iid in self.records or s.locked()}
            pending = to_do(self.records, self.done)
            instances = self.instances.local(self.registered_by) if pending else {}
            started = 0
            for iid, record in pending.items():
                if not for_here(iid, record, instances):
                    log.debug("%s: %s asked of a container not registered here; not done", iid, record.action)
                    continue
                self.done[iid] = record.written
                serial = self.serial.setdefault(iid, threading.Lock())
                threading.Thread(target=self._carry_out, args=(iid, record, serial), name=f"action-{iid}",
                                 daemon=True).start()
                started += 1
        return started

    def _carry_out(self, iid: str, record: ContainerAction, serial: threading.Lock) -> None:
        try:
            with serial:
                outcome = self.engine(record.action, record.container_id, record.started, record.timeout)
        except Exception as exc:               # the engine is away: the next answer or sync retries
            log.warning("%s: could not %s container %s: %s; trying again later", iid, record.action,
                        record.container_id[:12], exc)
            self._forget(iid, record.written)
            return
        log.info("%s: %s asked (%s): %s", iid, record.action, record.reason or "no reason given", outcome)

    def _forget(self, iid: str, written: float) -> None:
        with self.lock:
            if self.done.get(iid) == written:
                del self.done[iid]
