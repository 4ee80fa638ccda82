"""Progressive mode, carried out: each interval, measure the canary through Prometheus, let
`analysis` decide, and act on the routing policy (check-and-set, like every change).

The state lives in Consul KV (gatekeeper/analysis/<service>), written after every step, so a
new leader resumes at the same weight with the same failed checks. Only the leader runs this.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional

from catalog.model import PROGRESSIVE, RUNNING, AnalysisState as State, RegisteredInstance, RoutingPolicy
from catalog.stores import Stores
from catalog.validation import InvalidValue

from .. import metrics
from . import analysis
from .analysis import ADVANCE, PROMOTE, ROLLBACK
from ..prometheus import MetricsUnavailable, Prometheus

log = logging.getLogger(__name__)


class Progressive:
    def __init__(self, stores: Stores, prometheus: Optional[Prometheus],
                 set_weight: Callable[[str, str, int], bool], promote: Callable[[str, str], bool],
                 roll_back: Callable[[str, str, str, List[RegisteredInstance]], bool],
                 clock: Callable[[], float] = time.time):
        self.stores, self.prometheus, self.clock = stores, prometheus, clock
        self.set_weight, self.promote, self.roll_back = set_weight, promote, roll_back
        self.due: Dict[str, float] = {}          # service -> its next check (epoch seconds)
        self.lock = threading.RLock()            # a step, or a canary being set with its analysis

    def begin(self, service: str, version: str, policy: RoutingPolicy) -> State:
        """A new canary entered progressive mode (at the first step's weight): a fresh analysis,
        replacing one of an older canary (which is superseded, not judged)."""
        before = self.stores.analysis.get(service)
        if before and before.status == RUNNING and before.version != version:
            self.stores.history.add(service, "analysis superseded", version=before.version, by=version,
                                    weight=before.weight)
        state = analysis.start(service, version, policy.analysis, self.clock())
        self.stores.analysis.put(state)
        self.due[service] = state.next_check
        self.stores.history.add(service, "analysis started", version=version, weight=state.weight,
                                settings=asdict(policy.analysis))
        log.info("%s: %s is the canary at %d %%; analysis every %g s", service, version, state.weight,
                 policy.analysis.interval)
        return state

    def tick(self, service: str, registered: List[RegisteredInstance]) -> None:
        """Called at every reconcile: judge the canary when its interval has passed. The policy
        is read under the lock, so a canary set meanwhile is seen with its analysis."""
        with self.lock:
            try:
                policy = self.stores.policies.get(service)[1]
            except InvalidValue:
                return
            if policy is not None:
                self._tick(service, policy, registered)

    def _tick(self, service: str, policy: RoutingPolicy, registered: List[RegisteredInstance]) -> None:
        if policy.mode != PROGRESSIVE or not policy.canary:
            self.due.pop(service, None)
            return
        state = self.stores.analysis.get(service)
        if state is None or state.version != policy.canary or state.status != RUNNING:
            # made the canary some other way: `gatekeeper canary` (a rolled-back version tried
            # again starts a new analysis), or the mode changed while it was the canary
            state = self.begin(service, policy.canary, policy)
            if policy.weight != state.weight:
                self.set_weight(service, policy.canary, state.weight)
            return
        self.due[service] = state.next_check
        if self.clock() < state.next_check:
            return
        self._step(service, policy, state, registered)

    def next_due(self) -> Optional[float]:
        """The earliest next check, as time.monotonic(), if any analysis is running."""
        if not self.due:
            return None
        return time.monotonic() + max(0.0, min(self.due.values()) - self.clock())

    def _step(self, service: str, policy: RoutingPolicy, state: State, registered) -> None:
        settings = policy.analysis
        canary = stable = None
        error = ""
        if self.prometheus is None:
            error = "gatekeeper runs without --prometheus"
        else:
            try:
                canary = self.prometheus.measure(service, policy.canary, settings.interval)
            except MetricsUnavailable as exc:
                error = str(exc)
            if policy.stable:
                try:
                    stable = self.prometheus.measure(service, policy.stable, settings.interval)
                except MetricsUnavailable:
                    stable = None
        decision = analysis.judge(settings, state, canary, stable, error, self.clock())
        acted = True
        if decision.action == ADVANCE:
            acted = self.set_weight(service, policy.canary, decision.state.weight)
        elif decision.action == PROMOTE:
            acted = self.promote(service, policy.canary)
        elif decision.action == ROLLBACK:
            acted = self.roll_back(service, policy.canary, decision.check.reason,
                                   [ri for ri in registered if ri.instance.version == policy.canary])
        if not acted:      # the policy changed under us (an operator): judge again next interval
            decision = replace(decision, state=replace(state, next_check=decision.state.next_check))
        self.stores.analysis.put(decision.state)
        self.due[service] = decision.state.next_check
        check = decision.check
        self.stores.history.add(service, "analysis", version=policy.canary, result=check.result,
                                weight=check.weight, reason=check.reason,
                                **({"canary": check.canary} if check.canary else {}),
                                **({"stable": check.stable} if check.stable else {}))
        metrics.ANALYSIS_STEPS.labels(service, check.result).inc()
        log.info("%s: analysis of %s: %s", service, policy.canary, check.reason)
