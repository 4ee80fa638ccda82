"""How many replicas a Swarm service should have: pure decisions, no I/O.

`autoscaler` carries them out. Admitted instances are what serves, so the decision
counts those: it never adds more while earlier ones are still on their way through the gate,
and a rate per instance is a rate per admitted instance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from catalog.model import Scaling


@dataclass(frozen=True)
class Load:
    """The service's traffic through the proxies over the window; None: not known (`why`)."""
    rate: Optional[float]          # requests per second, every version
    p99_ms: Optional[float] = None
    why: str = ""


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int                  # what the service should have; equal to now: no change
    reason: str

    def changes(self, current: int) -> bool:
        return self.replicas != current


def decide(s: Scaling, current: int, admitted: int, load: Load, since_change: float) -> ScaleDecision:
    """`current`: the replicas Swarm is asked for; `admitted`: instances that pass their gate;
    `since_change`: seconds since the replica count last changed."""
    if current < s.min:
        return ScaleDecision(s.min, f"{current} replicas is below the minimum {s.min}")
    if current > s.max:
        return ScaleDecision(s.max, f"{current} replicas is above the maximum {s.max}")
    if not s.automatic:
        return ScaleDecision(current, "no target set (rps or p99): replicas change only by hand")
    if admitted < current:
        return ScaleDecision(current, f"holding: {admitted} of {current} replicas admitted so far")
    if load.rate is None:
        return ScaleDecision(current, f"holding: no traffic figures ({load.why or 'no data'})")
    want, reasons = current, []
    if s.rps > 0:
        want = max(1, math.ceil(load.rate / s.rps - 1e-9))
        reasons.append(f"{load.rate:.0f} req/s at {s.rps:g} req/s per instance needs {want}")
    if s.p99_ms > 0 and load.p99_ms is not None:
        if load.p99_ms > s.p99_ms:
            want = max(want, current + 1)
            reasons.append(f"p99 {load.p99_ms:.0f} ms > {s.p99_ms:g} ms")
        elif s.rps <= 0 and load.p99_ms < s.p99_ms / 2:
            want = current - 1
            reasons.append(f"p99 {load.p99_ms:.0f} ms < half of {s.p99_ms:g} ms")
    want = max(current - s.step, min(current + s.step, want))
    want = max(s.min, min(s.max, want))
    why = "; ".join(reasons) or "no figure says otherwise"
    if want < current and since_change < s.cooldown:
        return ScaleDecision(current, f"holding: {why}, but the last change was {since_change:.0f} s ago "
                                      f"(cooldown {s.cooldown:g} s)")
    if want == current:
        bound = " (the maximum)" if current == s.max else " (the minimum)" if current == s.min else ""
        return ScaleDecision(current, f"steady at {current}{bound}: {why}")
    return ScaleDecision(want, why)
