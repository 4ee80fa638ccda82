"""Progressive delivery's decisions, pure: given the canary's live metrics over the last
interval, what happens to it next. No I/O here; `progressive` carries them out.

A check passes when the canary's success rate (answers that are not 5xx) is at least the
setting and its p99 at most the setting; its weight then rises by `step` up to `max_weight`,
and a pass at `max_weight` promotes it. A failed check holds the weight; `threshold` failed
checks roll it back. Too few requests in the interval, or metrics that cannot be read, are no
evidence either way: the step holds and says why, and it is never a pass.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import List, Optional

from catalog.model import PROMOTED, ROLLED_BACK, Analysis
from catalog.model import AnalysisCheck as Check
from catalog.model import AnalysisState as State

PASS, FAIL, HOLD, INCONCLUSIVE = "pass", "fail", "hold", "inconclusive"
ADVANCE, STAY, PROMOTE, ROLLBACK = "advance", "stay", "promote", "rollback"
KEEP_CHECKS = 20                     # the state keeps the last checks; history keeps them all


@dataclass(frozen=True)
class Measurement:
    """One version's traffic through the proxies over the window."""
    requests: float                  # requests answered (any status)
    success_rate: Optional[float]    # % not 5xx; None without requests
    p99_ms: Optional[float]          # None without requests

    def describe(self) -> str:
        if not self.requests:
            return "no requests"
        return f"{self.requests:.0f} requests, success {pct(self.success_rate)}, p99 {ms(self.p99_ms)}"


@dataclass(frozen=True)
class Decision:
    action: str                      # advance, stay, promote, rollback
    check: Check
    state: State


def start(service: str, version: str, settings: Analysis, now: Optional[float] = None) -> State:
    now = time.time() if now is None else now
    return State(service, version, min(settings.step, settings.max_weight), now, now + settings.interval)


def pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} %"


def ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def breaches(settings: Analysis, m: Measurement) -> List[str]:
    """What is out of range, in words ("success rate 96.8 % < 99 %")."""
    out = []
    if m.success_rate is None or m.success_rate < settings.success_rate:
        out.append(f"success rate {pct(m.success_rate)} < {settings.success_rate:g} %")
    if m.p99_ms is not None and m.p99_ms > settings.p99_ms:
        out.append(f"p99 {ms(m.p99_ms)} > {settings.p99_ms:g} ms")
    return out


def judge(settings: Analysis, state: State, canary: Optional[Measurement], stable: Optional[Measurement] = None,
          error: str = "", now: Optional[float] = None) -> Decision:
    """The next step of `state` given the canary's measurement over the last interval (None
    with `error` when the metrics could not be read)."""
    now = time.time() if now is None else now
    weight = state.weight
    nxt = replace(state, next_check=now + settings.interval)

    def decided(action: str, result: str, reason: str, **changes) -> Decision:
        check = Check(now, weight, result, reason, asdict(canary) if canary else None,
                      asdict(stable) if stable else None)
        new = replace(nxt, checks=(state.checks + [check])[-KEEP_CHECKS:], reason=reason, **changes)
        return Decision(action, check, new)

    if canary is None:
        return decided(STAY, INCONCLUSIVE, f"metrics unavailable ({error or 'no answer'}); holding at {weight} %")
    if canary.requests < settings.min_requests or not canary.requests:
        return decided(STAY, HOLD, f"too little traffic to judge: {canary.requests:.0f} requests < "
                                   f"{settings.min_requests} in {settings.interval:g} s; holding at {weight} %")
    out = breaches(settings, canary)
    if out:
        failed = state.failed + 1
        checks = len(state.checks) + 1
        if failed >= settings.threshold:
            reason = (f"rolled back at {weight} %: {'; '.join(out)} "
                      f"({failed} failed check{'s' if failed > 1 else ''} of {checks})")
            return decided(ROLLBACK, FAIL, reason, failed=failed, status=ROLLED_BACK, weight=0)
        return decided(STAY, FAIL, f"{'; '.join(out)}: failed check {failed} of {settings.threshold} allowed; "
                                   f"holding at {weight} %", failed=failed)
    if weight >= settings.max_weight:
        return decided(PROMOTE, PASS, f"{canary.describe()} at {weight} %: promoted", status=PROMOTED)
    after = min(weight + settings.step, settings.max_weight)
    return decided(ADVANCE, PASS, f"{canary.describe()}: {weight} % -> {after} %", weight=after)
