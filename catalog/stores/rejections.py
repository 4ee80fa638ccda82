"""Why registrator did not register a container (registrator/rejected/<container name>), for
`gatekeeper status` and `why` to show."""
from __future__ import annotations

from typing import Dict

from ..consul_client import ConsulClient
from ..kv_layout import REJECTED
from ..model import Rejection
from ._records import records_under


class RejectionStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def put(self, rejection: Rejection) -> None:
        self.consul.kv_put(REJECTED + rejection.container_name, rejection.to_json())

    def forget(self, container_name: str) -> None:
        self.consul.kv_delete(REJECTED + container_name)

    def all(self) -> Dict[str, Rejection]:
        """Container name -> its rejection; unreadable records are skipped."""
        return records_under(self.consul, REJECTED, Rejection.from_json)
