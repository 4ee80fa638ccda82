"""Each service's routing policy (gatekeeper/policies/<service>), default test image
(gatekeeper/tests/<service>) and a rollback waiting for drained containers
(gatekeeper/rollbacks/<service>)."""
from __future__ import annotations

import json
import logging
from typing import Dict, List, Optional, Tuple

from ..consul_client import ConsulClient
from ..kv_layout import DEFAULT_TESTS, GATEKEEPER, POLICIES, ROLLBACKS
from ..model import RollbackRequest, RoutingPolicy
from ..validation import parse_policy

log = logging.getLogger(__name__)


class PolicyStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    def get(self, service: str) -> Tuple[int, Optional[RoutingPolicy]]:
        """(ModifyIndex, policy); a policy that fails validation raises InvalidValue."""
        index, raw = self.consul.kv_get(POLICIES + service)
        if not raw:
            return index, None
        return index, parse_policy(raw)

    def put(self, policy: RoutingPolicy, cas: int) -> bool:
        """Check-and-set: False when someone else changed the policy since `cas` was read."""
        return self.consul.kv_put(POLICIES + policy.service, policy.to_json(), cas=cas)

    def services(self) -> List[str]:
        """Services with a routing policy or a default test image, registered or not."""
        names = {k[len(POLICIES):] for k in self.consul.kv_keys(POLICIES)}
        names |= {k[len(DEFAULT_TESTS):] for k in self.consul.kv_keys(DEFAULT_TESTS)}
        return sorted(n for n in names if n and "/" not in n)

    def tests_image(self, service: str) -> str:
        """The service's default test image ("" when it has none)."""
        return self.consul.kv_get(DEFAULT_TESTS + service)[1] or ""

    def set_tests_image(self, service: str, image: str) -> None:
        self.consul.kv_put(DEFAULT_TESTS + service, image)

    def rollback(self, service: str) -> Tuple[int, Optional[RollbackRequest]]:
        """(ModifyIndex, the rollback waiting for drained containers, or None); a damaged record
        is None (logged), so the next request replaces it."""
        index, raw = self.consul.kv_get(ROLLBACKS + service)
        if not raw:
            return index, None
        try:
            return index, RollbackRequest.from_json(raw)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            log.warning("%s%s: damaged rollback request ignored", ROLLBACKS, service)
            return index, None

    def rollbacks_waiting(self) -> List[str]:
        """The services a rollback request waits for (keys only)."""
        return [k[len(ROLLBACKS):] for k in self.consul.kv_keys(ROLLBACKS) if k != ROLLBACKS]

    def put_rollback(self, service: str, request: RollbackRequest, cas: int) -> bool:
        """Check-and-set, as policies are: False when it changed since `cas` was read."""
        return self.consul.kv_put(ROLLBACKS + service, request.to_json(), cas=cas)

    def clear_rollback(self, service: str, cas: Optional[int] = None) -> bool:
        return self.consul.kv_delete(ROLLBACKS + service, cas=cas)

    def forget(self, service: str) -> List[str]:
        """Remove the service's policy, default test image and any waiting rollback; return the
        keys removed."""
        return self.consul.kv_delete_present([POLICIES + service, DEFAULT_TESTS + service, ROLLBACKS + service])

    def wait(self, index: int, wait: float) -> Tuple[int, Dict[str, str]]:
        """Blocking query on everything gatekeeper keeps (policies, retests, default images)."""
        return self.consul.wait_kv(GATEKEEPER, index, wait)

    def wait_changes(self, index: int, wait: float) -> int:
        """Block until anything gatekeeper keeps (verdicts, policies, ...) changes or `wait`
        seconds pass; return the index to pass next time (0: return at once). Keys only."""
        return self.consul.wait_keys(GATEKEEPER, index, wait)
