"""Apply gatekeeper's gate decisions to this host's gate checks.

A TTL check can be set only through the agent its service is registered with, and a host's
agent answers HTTP on that host only, while gatekeeper may run on any host. So gatekeeper writes
each decision to KV under gatekeeper/gates/<node>/<instance id>, and each host's registrator
follows its own node's prefix (registrator.follow) and sets the checks that differ. Every write
wakes it, the same decision written again too (a record carries its time): gatekeeper shuts a
forged gate by writing its decision again.

Fail closed: a gate opens only for a record made for that very run of the container (its id and
start time); without one the gate is shut.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, List, Tuple

from catalog.model import GateRecord, Instance
from catalog.stores import InstanceStore, NodeRecordStore

from .follow import NodeFollower

log = logging.getLogger(__name__)

NO_DECISION = "no gatekeeper verdict for this run of the container"


def differences(instances: Dict[str, Instance], checks: Dict[str, Tuple[str, str]],
                records: Dict[str, GateRecord]) -> List[Tuple[Instance, bool, str]]:
    """(instance, passing, output) for every gate check that is not what gatekeeper decided."""
    out = []
    for inst in instances.values():
        current = checks.get(inst.gate_check_id)
        if current is None:
            continue                                   # registered this instant; next pass
        status, output = current
        record = records.get(inst.id)
        if record is not None and record.applies_to(inst):
            if (status == "passing") != record.passing or output != record.output:
                out.append((inst, record.passing, record.output))
        elif status == "passing":                      # forged, or left from an earlier run
            out.append((inst, False, NO_DECISION))
    return out


class GateMirror(NodeFollower):
    """Follows this node's gate records and keeps the local gate checks equal to them."""

    kind = "gate records"

    def __init__(self, instances: InstanceStore, node_records: NodeRecordStore, registered_by: str,
                 stopping: threading.Event, wait: float = 30.0):
        super().__init__(instances, node_records, stopping, wait)
        self.registered_by = registered_by

    def fetch(self, node: str, index: int, wait: float):
        return self.node_records.gates(node, index, wait)

    def apply(self) -> int:
        """Set every local gate check that differs from its record; how many were set. Nothing
        before the records were read once (a gate is never shut for want of reading them)."""
        with self.lock:
            if self.records is None:
                return 0
            instances = self.instances.local(self.registered_by)
            checks = self.instances.gate_checks()
            changes = differences(instances, checks, self.records)
            for inst, passing, output in changes:
                self.instances.apply_gate(inst, passing, output)
                log.info("%s: gate %s (%s)", inst.id, "open" if passing else "shut", output[:120])
        return len(changes)
