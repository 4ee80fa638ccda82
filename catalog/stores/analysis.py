"""Where each service's progressive analysis stands (gatekeeper/analysis/<service>)."""
from __future__ import annotations

from typing import List, Optional

from ..consul_client import ConsulClient
from ..kv_layout import ANALYSIS
from ..model import AnalysisState
from ._records import read_record


class AnalysisStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def get(self, service: str) -> Optional[AnalysisState]:
        """Where the service's progressive analysis stands, if it has one."""
        return read_record(self.consul, ANALYSIS + service, AnalysisState.from_json, f"analysis state of {service}")

    def put(self, state: AnalysisState) -> None:
        self.consul.kv_put(ANALYSIS + state.service, state.to_json())

    def forget(self, service: str) -> List[str]:
        return self.consul.kv_delete_present([ANALYSIS + service])
