"""Restarts tried on each unhealthy instance's container (gatekeeper/healing/<instance id>):
tries, last, gave_up, reason."""
from __future__ import annotations

import json
from typing import Dict, Optional

from ..consul_client import ConsulClient
from ..kv_layout import HEALING
from ._records import read_record, records_under


class HealingStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def get(self, instance_id: str) -> Optional[dict]:
        return read_record(self.consul, HEALING + instance_id, json.loads, f"healing record of {instance_id}")

    def all(self) -> Dict[str, dict]:
        """Instance id -> its healing record; unreadable records skipped."""
        return records_under(self.consul, HEALING, json.loads)

    def put(self, instance_id: str, record: Optional[dict], *with_ops) -> None:
        """Keep `record` for the instance; None removes it. With `with_ops` (kv_txn operations,
        e.g. the container action the record counts), all are written at once or none."""
        if with_ops:
            op = ("delete", HEALING + instance_id, None, None) if record is None else \
                ("set", HEALING + instance_id, json.dumps(record, sort_keys=True), None)
            self.consul.kv_txn([op, *with_ops])
        elif record is None:
            self.consul.kv_delete(HEALING + instance_id)
        else:
            self.consul.kv_put(HEALING + instance_id, json.dumps(record, sort_keys=True))
