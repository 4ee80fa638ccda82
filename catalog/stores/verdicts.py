"""Gatekeeper's verdicts (gatekeeper/verdicts/<instance id>) and the operator's retest requests
(gatekeeper/retest/<instance id>)."""
from __future__ import annotations

import json
import time
from typing import Dict, List, Optional, Tuple

from ..consul_client import ConsulClient
from ..kv_layout import RETESTS, VERDICTS
from ..model import Verdict
from ._records import read_record, records_under


class VerdictStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def get(self, instance_id: str) -> Optional[Verdict]:
        return read_record(self.consul, VERDICTS + instance_id, Verdict.from_json, f"verdict for {instance_id}")

    def all(self) -> Dict[str, Verdict]:
        """Every stored verdict by instance id, in one read (unreadable ones left out): what a
        pass over thousands of instances compares their gates with."""
        return records_under(self.consul, VERDICTS, Verdict.from_json)

    def get_indexed(self, instance_id: str) -> Tuple[int, Optional[Verdict]]:
        """(ModifyIndex, verdict): the index a check-and-set `put` names (0: no verdict); the
        verdict None too when it is unreadable."""
        index, raw = self.consul.kv_get(VERDICTS + instance_id)
        try:
            return index, Verdict.from_json(raw) if raw is not None else None
        except (ValueError, KeyError, TypeError):
            return index, None

    def put(self, verdict: Verdict, cas: Optional[int] = None) -> bool:
        """Write the verdict; with `cas`, only while the stored one is still at that index (0:
        none): False when another writer put one since."""
        return self.consul.kv_put(VERDICTS + verdict.instance_id, verdict.to_json(), cas=cas)

    def ids(self) -> List[str]:
        """The instance ids that have a stored verdict (keys only: cheap even with thousands)."""
        return [k[len(VERDICTS):] for k in self.consul.kv_keys(VERDICTS)]

    def forget(self, instance_id: str) -> None:
        self.consul.kv_delete(VERDICTS + instance_id)

    def request_retest(self, instance_id: str) -> None:
        self.consul.kv_put(RETESTS + instance_id, json.dumps({"time": time.time()}))

    def retests(self) -> List[str]:
        """The instance ids whose retest is asked for."""
        return [k[len(RETESTS):] for k in self.consul.kv_list(RETESTS)]

    def retest_asked(self, instance_id: str) -> int:
        """The ModifyIndex of the retest asked for the instance (0: none), for `clear_retest`'s cas."""
        return self.consul.kv_get(RETESTS + instance_id)[0]

    def clear_retest(self, instance_id: str, cas: Optional[int] = None) -> None:
        """Take the retest request away; with `cas`, only that request, not one asked again since."""
        self.consul.kv_delete(RETESTS + instance_id, cas=cas)
