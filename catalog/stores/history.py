"""Each service's history (gatekeeper/history/<service>/<ns time>): promotions, aborts,
scaling, healing, forced admissions, one JSON event per key."""
from __future__ import annotations

import json
import time
from typing import List

from ..consul_client import ConsulClient
from ..kv_layout import HISTORY
from ._records import records_under


class HistoryStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def add(self, service: str, event: str, **details) -> None:
        entry = {"time": time.time(), "event": event, **details}
        self.consul.kv_put(f"{HISTORY}{service}/{time.time_ns():020d}", json.dumps(entry, sort_keys=True))

    def forget(self, service: str) -> List[str]:
        """Remove the service's history; return the keys removed."""
        keys = self.consul.kv_keys(f"{HISTORY}{service}/")
        self.consul.kv_delete_tree(f"{HISTORY}{service}/")
        return keys

    def of(self, service: str) -> List[dict]:
        """The service's events, oldest first; unreadable ones skipped."""
        return [e for _, e in sorted(records_under(self.consul, f"{HISTORY}{service}/", json.loads).items())]
