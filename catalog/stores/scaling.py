"""The last change of each Swarm service's replica count (gatekeeper/scaling/<service>)."""
from __future__ import annotations

import json
from typing import List, Optional

from ..consul_client import ConsulClient
from ..kv_layout import SCALING
from ._records import read_record


class ScalingStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def get(self, service: str) -> Optional[dict]:
        """The last change of a Swarm service's replica count: time, replicas, previous, reason, by."""
        return read_record(self.consul, SCALING + service, json.loads, f"scaling record of {service}")

    def put(self, service: str, record: dict) -> None:
        self.consul.kv_put(SCALING + service, json.dumps(record, sort_keys=True))

    def forget(self, service: str) -> List[str]:
        return self.consul.kv_delete_present([SCALING + service])
