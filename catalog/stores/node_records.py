"""What gatekeeper asks of each node's registrator, per instance: the gate to apply
(gatekeeper/gates/<node>/<instance id>) and a container action to carry out
(gatekeeper/actions/<node>/<instance id>). A host's agent answers on that host only, so
gatekeeper writes here and each registrator follows its own node's records."""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Tuple

from ..consul_client import ConsulClient
from ..kv_layout import ACTIONS, GATES, MARKERS
from ..model import ContainerAction, GateRecord, Instance, MarkerRecord

log = logging.getLogger(__name__)

TXN_OPS = 64          # the most operations Consul takes in one transaction


class NodeRecordStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    # --- gates: gatekeeper decides, the instance's own host applies -------------------------
    def set_gate(self, inst: Instance, passing: bool, output: str) -> None:
        """Record the gate of `inst` for its node's registrator to apply. Every write wakes it, the
        same decision written again too (the record carries its time): gatekeeper shuts a forged
        gate check by writing its decision again."""
        if not inst.node:
            raise ValueError(f"{inst.id}: the instance's node is unknown (read it from the catalog)")
        record = GateRecord(passing, output[:1000], inst.container_id, inst.started, time.time())
        self.consul.kv_put(f"{GATES}{inst.node}/{inst.id}", record.to_json())

    def set_gates(self, decisions: List[Tuple[Instance, bool, str]]) -> None:
        """Several gates at once, as set_gate writes each: TXN_OPS records per Consul
        transaction, so a thousand corrections cost a few dozen requests, not a thousand."""
        for inst, _, _ in decisions:
            if not inst.node:
                raise ValueError(f"{inst.id}: the instance's node is unknown (read it from the catalog)")
        now = time.time()
        ops = [("set", f"{GATES}{inst.node}/{inst.id}",
                GateRecord(passing, output[:1000], inst.container_id, inst.started, now).to_json(), None)
               for inst, passing, output in decisions]
        for start in range(0, len(ops), TXN_OPS):
            self.consul.kv_txn(ops[start:start + TXN_OPS])

    def gates(self, node: str, index: int = 0, wait: float = 0.0) -> Tuple[int, Dict[str, GateRecord]]:
        """The gate records of one node's instances (blocking when `index` is given)."""
        return self._of_node(GATES, node, index, wait, GateRecord.from_json,
                             "gate record ignored (the gate stays shut)")

    # --- gate markers: gatekeeper decides, the Swarm task's own host writes it ---------------
    def set_marker(self, inst: Instance, state: str) -> None:
        """Record the gate marker of `inst` (a Swarm task) for its node's registrator to write."""
        if not inst.node:
            raise ValueError(f"{inst.id}: the instance's node is unknown (read it from the catalog)")
        record = MarkerRecord(state, inst.container_id, inst.started, time.time())
        self.consul.kv_put(f"{MARKERS}{inst.node}/{inst.id}", record.to_json())

    def markers(self, node: str, index: int = 0, wait: float = 0.0) -> Tuple[int, Dict[str, MarkerRecord]]:
        """The gate markers of one node's Swarm tasks (blocking when `index` is given)."""
        return self._of_node(MARKERS, node, index, wait, MarkerRecord.from_json,
                             "gate marker ignored (the task's marker stays as it is)")

    # --- container actions: gatekeeper asks, the container's own host carries them out --------
    def request_action(self, inst: Instance, action: str, reason: str, timeout: int = 10) -> None:
        """Ask the registrator of `inst`'s node to stop, restart or kill this run of its container."""
        _, key, value, _ = self.action_op(inst, action, reason, timeout)
        self.consul.kv_put(key, value)

    def action_op(self, inst: Instance, action: str, reason: str, timeout: int = 10):
        """request_action as one operation of a transaction (ConsulClient.kv_txn), to be written
        together with what decided it."""
        if not inst.node:
            raise ValueError(f"{inst.id}: the instance's node is unknown (read it from the catalog)")
        record = ContainerAction(action, inst.container_id, inst.started, reason[:300], timeout, time.time())
        return ("set", f"{ACTIONS}{inst.node}/{inst.id}", record.to_json(), None)

    def request_stopped(self, node: str, instance_id: str, container_id: str, started: str, action: str,
                        reason: str) -> None:
        """Ask `node`'s registrator to start a drained container again (a rollback), only while
        it is still stopped after the run `started`, or to remove it (drained too many versions
        ago), only while that run is its last."""
        if action not in ("start", "remove"):
            raise ValueError(f"{action!r} is not an action on a stopped container (start, remove)")
        record = ContainerAction(action, container_id, started, reason[:300], 10, time.time())
        self.consul.kv_put(f"{ACTIONS}{node}/{instance_id}", record.to_json())

    def withdraw_action(self, inst: Instance, action: str) -> bool:
        """Take back `action` if it was asked for the run of `inst` that is running now (a restart
        asked to heal an instance that healed before its host's registrator carried it out). A
        record for another run or another action stays. True when a record was taken back."""
        key = f"{ACTIONS}{inst.node}/{inst.id}"
        index, raw = self.consul.kv_get(key)
        if raw is None:
            return False
        try:
            record = ContainerAction.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return False
        if (record.action, record.container_id, record.started) != (action, inst.container_id, inst.started):
            return False
        return self.consul.kv_delete(key, cas=index)

    def actions(self, node: str, index: int = 0, wait: float = 0.0) -> Tuple[int, Dict[str, ContainerAction]]:
        """The container actions asked of one node (blocking when `index` is given)."""
        return self._of_node(ACTIONS, node, index, wait, ContainerAction.from_json,
                             "container action ignored (nothing is done)")

    def forget_old_actions(self, registered, older_than: float) -> List[str]:
        """Remove the container actions asked more than `older_than` seconds ago for instances no
        longer registered (a drained container removed, a rollback's start given up): each host's
        registrator has carried them out or never will. The keys removed."""
        cutoff, removed = time.time() - older_than, []
        for key, raw in self.consul.kv_list(ACTIONS).items():
            if key.rsplit("/", 1)[-1] in registered:
                continue
            try:
                stale = ContainerAction.from_json(raw).written < cutoff
            except (ValueError, KeyError, TypeError):
                stale = True                  # damaged: never carried out
            if not stale:
                continue
            index, now = self.consul.kv_get(key)      # removed only if nobody wrote it again since
            if now == raw and self.consul.kv_delete(key, cas=index):
                removed.append(key)
        return removed

    def forget(self, *instance_ids: str) -> None:
        """Remove the instances' gate records, gate markers and any container action asked for
        them, on whichever node: the three folders listed once however many instances go."""
        ids = set(instance_ids)
        for key in self.consul.kv_keys(GATES) + self.consul.kv_keys(MARKERS) + self.consul.kv_keys(ACTIONS):
            if key.rsplit("/", 1)[-1] in ids:
                self.consul.kv_delete(key)

    def _of_node(self, kind: str, node: str, index: int, wait: float, parse, what: str) -> Tuple[int, dict]:
        prefix = f"{kind}{node}/"
        if index:
            idx, raw = self.consul.wait_kv(prefix, index, wait)
        else:
            idx, raw = self.consul.kv_list_indexed(prefix)
        out = {}
        for key, value in raw.items():
            try:
                out[key[len(prefix):]] = parse(value)
            except (ValueError, KeyError, TypeError):
                log.warning("%s: damaged %s", key, what)
        return int(idx), out
