"""Write gatekeeper's gate markers into this host's Swarm tasks.

A Swarm task started with the stack's health command (catalog.model.GATE_MIRROR_HEALTH_CMD) is
healthy only while its container's GATE_MARKER says "open", and Swarm's rolling update stops an
old task only once the new one is healthy. gatekeeper decides each marker (open once the task
passed its gate and its version takes traffic), but a container's files are reached only
through the engine it runs on, and a swarm spans hosts. So gatekeeper writes the marker under
gatekeeper/markers/<node>/<instance id>, and the registrator of that node writes it into the
container, only into the run the record names.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Tuple

from catalog.model import MarkerRecord
from catalog.stores import InstanceStore, NodeRecordStore

from .follow import NodeFollower

log = logging.getLogger(__name__)

Writer = Callable[[str, str, str], str]    # (container id, started, state) -> what happened


class MarkerMirror(NodeFollower):
    """Follows this node's gate markers and writes each into its task's container once."""

    kind = "gate markers"

    def __init__(self, instances: InstanceStore, node_records: NodeRecordStore, write: Writer, registered_by: str,
                 stopping: threading.Event, wait: float = 30.0):
        super().__init__(instances, node_records, stopping, wait)
        self.write, self.registered_by = write, registered_by
        self.written: Dict[str, Tuple[str, str, str]] = {}    # instance id -> (container id, started, state)

    def fetch(self, node: str, index: int, wait: float):
        return self.node_records.markers(node, index, wait)

    def apply(self) -> int:
        """Write every marker whose container does not hold it yet; how many were written. A
        record for an instance not registered here (yet), or for another run of its container,
        waits for the next answer or sync."""
        with self.lock:
            if self.records is None:
                return 0
            self.written = {iid: w for iid, w in self.written.items() if iid in self.records}
            pending = {iid: r for iid, r in self.records.items()
                       if self.written.get(iid) != (r.container_id, r.started, r.state)}
            if not pending:
                return 0
            instances = self.instances.local(self.registered_by)
            done = 0
            for iid, record in pending.items():
                inst = instances.get(iid)
                if inst is None or not inst.gate_mirror or not record.applies_to(inst):
                    continue
                if self._write(iid, record):
                    done += 1
        return done

    def _write(self, iid: str, record: MarkerRecord) -> bool:
        try:
            outcome = self.write(record.container_id, record.started, record.state)
        except Exception as exc:               # stopping, a read-only /tmp, the engine away: next answer or sync
            log.warning("%s: could not write the gate marker %s: %s", iid, record.state, exc)
            return False
        self.written[iid] = (record.container_id, record.started, record.state)
        log.info("%s: gate marker %s (%s)", iid, record.state, outcome if outcome != f"marker {record.state}" else
                 "Swarm may go on with its update" if record.state == "open" else "Swarm sees the task unhealthy")
        return True
