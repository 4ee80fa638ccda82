"""A progressive rollout as the history tells it, and its chart as server-side SVG.

`last_rollout(history)` follows the last "analysis started" event of a service: each judged
step (weight, result, canary and stable figures), then how it ended (promoted, rolled back,
aborted, superseded) or that it still runs. `svg(rollout)` draws three panels over the same
time axis: the canary's weight with each step's decision, canary and stable success rate
against the threshold, canary and stable p99 against the threshold. The SVG carries no style
and no script: the page's stylesheet colours it by class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import List, Optional, Tuple

RUNNING = "running"
ENDINGS = {"promoted": "promoted", "aborted": "aborted", "rolled back": "rolled back",
           "analysis superseded": "superseded"}


@dataclass
class Step:
    t: float                       # seconds since the rollout started
    weight: int                    # the weight the step judged
    result: str                    # pass, fail, hold, inconclusive
    reason: str
    canary: Optional[dict] = None  # {"requests", "success_rate", "p99_ms"}
    stable: Optional[dict] = None


@dataclass
class Rollout:
    version: str
    started: float                 # epoch seconds
    weight: int                    # the first step's weight
    settings: dict
    steps: List[Step] = field(default_factory=list)
    outcome: str = RUNNING
    outcome_t: Optional[float] = None
    outcome_by: str = ""
    outcome_reason: str = ""

    @property
    def duration(self) -> float:
        ends = [s.t for s in self.steps] + ([self.outcome_t] if self.outcome_t is not None else [])
        return max(ends, default=0.0)

    def weights(self) -> List[Tuple[float, int]]:
        """(t, weight) where the canary's share changed: the start, each step, the end."""
        points = [(0.0, self.weight)] + sorted((s.t, s.weight) for s in self.steps)
        end = max(self.outcome_t or 0.0, points[-1][0])
        if self.outcome == "promoted":
            points.append((end, 100))
        elif self.outcome in ("rolled back", "aborted"):
            points.append((end, 0))
        return points


def number(value, default: float = 0.0) -> float:
    """A figure from a history entry (JSON anyone with the operator's token may write): a number,
    or the default for anything else."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else default


def last_rollout(history: List[dict]) -> Optional[Rollout]:
    """The service's last progressive rollout, from its history (oldest event first)."""
    rollout: Optional[Rollout] = None
    for e in history:
        event, version, t = e.get("event"), e.get("version"), number(e.get("time"))
        if event == "analysis started":
            settings = e.get("settings") if isinstance(e.get("settings"), dict) else {}
            settings = {k: number(v, None) for k, v in settings.items()}
            rollout = Rollout(str(version or "?"), t, int(number(e.get("weight"))), settings)
        elif rollout is None or version != rollout.version:
            continue
        elif event == "analysis":          # the deciding step is written just after the rollback it caused
            rollout.steps.append(Step(max(0.0, t - rollout.started), int(number(e.get("weight"))),
                                      str(e.get("result", "?")), str(e.get("reason", "")),
                                      *(m if isinstance(m, dict) else None for m in (e.get("canary"), e.get("stable")))))
        elif event in ENDINGS and rollout.outcome == RUNNING:
            rollout.outcome = ENDINGS[event]
            if event == "aborted" and "analysis" in str(e.get("by", "")):
                rollout.outcome = "rolled back"
            rollout.outcome_t = max(0.0, t - rollout.started)
            rollout.outcome_by = str(e.get("by", ""))
            rollout.outcome_reason = str(e.get("reason", ""))
    return rollout


# --- drawing -------------------------------------------------------------------------------
WIDTH, PANEL, GAP, LEFT, RIGHT, TOP = 760, 130, 40, 64, 110, 22


class _Panel:
    def __init__(self, index: int, t_max: float, low: float, high: float):
        self.y0 = TOP + index * (PANEL + GAP)
        self.t_max, self.low, self.high = t_max or 1.0, low, high if high > low else low + 1

    def x(self, t: float) -> float:
        return round(LEFT + (WIDTH - LEFT - RIGHT) * t / self.t_max, 1)

    def y(self, v: float) -> float:
        v = min(max(v, self.low), self.high)
        return round(self.y0 + PANEL - PANEL * (v - self.low) / (self.high - self.low), 1)


def _figure(m: Optional[dict], key: str) -> Optional[float]:
    if not m or not number(m.get("requests")):
        return None
    return number(m.get(key), None)


def _series(panel: _Panel, steps: List[Step], who: str, key: str) -> str:
    points = [(s.t, _figure(getattr(s, who), key)) for s in steps]
    points = [(t, v) for t, v in points if v is not None]
    if not points:
        return ""
    path = " ".join(f"{panel.x(t)},{panel.y(v)}" for t, v in points)
    dots = "".join(f'<circle class="{who}" cx="{panel.x(t)}" cy="{panel.y(v)}" r="3"><title>{who} {v:g}</title></circle>'
                   for t, v in points)
    return f'<polyline class="{who}" points="{path}"/>{dots}'


def _frame(panel: _Panel, title: str, ticks: List[float], unit: str) -> str:
    out = [f'<text class="panel-title" x="{LEFT}" y="{panel.y0 - 8}">{escape(title)}</text>',
           f'<rect class="frame" x="{LEFT}" y="{panel.y0}" width="{WIDTH - LEFT - RIGHT}" height="{PANEL}"/>']
    for v in ticks:
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{panel.y(v) + 4}" text-anchor="end">{v:g}{unit}</text>')
    return "".join(out)


def _threshold(panel: _Panel, value: Optional[float], label: str) -> str:
    if value is None:
        return ""
    y = panel.y(value)
    return (f'<line class="threshold" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>'
            f'<text class="threshold-label" x="{WIDTH - RIGHT + 6}" y="{y + 4}">{escape(label)}</text>')


def svg(r: Rollout) -> str:
    """The rollout's chart: weight and decisions, success rate, p99; one step marker per step."""
    t_max = max(r.duration, r.settings.get("interval") or 1.0) * 1.05
    weight = _Panel(0, t_max, 0, 100)
    rates = [v for s in r.steps for m in (s.canary, s.stable) for v in [_figure(m, "success_rate")] if v is not None]
    threshold_rate = r.settings.get("success_rate")
    low = min(rates + ([threshold_rate] if threshold_rate is not None else []) + [99.0])
    success = _Panel(1, t_max, max(0.0, low - 1), 100)
    p99s = [v for s in r.steps for m in (s.canary, s.stable) for v in [_figure(m, "p99_ms")] if v is not None]
    threshold_p99 = r.settings.get("p99_ms")
    latency = _Panel(2, t_max, 0, max(p99s + ([threshold_p99] if threshold_p99 else []) + [1.0]) * 1.1)
    height = TOP + 3 * PANEL + 2 * GAP + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="rollout-chart" viewBox="0 0 {WIDTH} {height}" '
           f'role="img" aria-label="progressive rollout of {escape(r.version)}: {len(r.steps)} steps, {escape(r.outcome)}">',
           f"<title>rollout of {escape(r.version)}: {escape(r.outcome)}</title>",
           _frame(weight, f"{r.version}: canary weight and each step's decision", [0, 50, 100], "%"),
           _frame(success, "success rate: canary vs stable", [success.low, 100], "%"),
           _frame(latency, "p99: canary vs stable", [0, round(latency.high / 1.1)], " ms"),
           _threshold(success, threshold_rate, f"at least {threshold_rate:g} %" if threshold_rate is not None else ""),
           _threshold(latency, threshold_p99, f"at most {threshold_p99:g} ms" if threshold_p99 else "")]
    path = []
    for (t, w), (t2, _) in zip(r.weights(), r.weights()[1:] + [(None, None)]):
        path.append(f"{weight.x(t)},{weight.y(w)}")
        if t2 is not None:
            path.append(f"{weight.x(t2)},{weight.y(w)}")
    out.append(f'<polyline class="weight" points="{" ".join(path)}"/>')
    for i, s in enumerate(r.steps, 1):
        out.append(f'<circle class="step result-{escape(s.result)}" cx="{weight.x(s.t)}" cy="{weight.y(s.weight)}" r="5" '
                   f'data-weight="{s.weight}" data-result="{escape(s.result)}"><title>step {i} at {s.weight}%: '
                   f'{escape(s.result)}: {escape(s.reason)}</title></circle>')
    out += [_series(success, r.steps, "stable", "success_rate"), _series(success, r.steps, "canary", "success_rate"),
            _series(latency, r.steps, "stable", "p99_ms"), _series(latency, r.steps, "canary", "p99_ms")]
    if r.outcome_t is not None:
        x = weight.x(r.outcome_t)
        out.append(f'<line class="outcome outcome-{r.outcome.replace(" ", "-")}" x1="{x}" y1="{TOP}" x2="{x}" '
                   f'y2="{latency.y0 + PANEL}"/><text class="outcome-label" x="{x + 4}" y="{TOP + 12}">'
                   f'{escape(r.outcome)}</text>')
    axis_y = latency.y0 + PANEL + 16
    out.append(f'<text class="tick" x="{LEFT}" y="{axis_y}">0 s</text>'
               f'<text class="tick" x="{WIDTH - RIGHT}" y="{axis_y}" text-anchor="end">{t_max / 1.05:.0f} s</text>'
               f'<text class="legend canary" x="{WIDTH - RIGHT + 6}" y="{weight.y0 + PANEL - 20}">— canary</text>'
               f'<text class="legend stable" x="{WIDTH - RIGHT + 6}" y="{weight.y0 + PANEL - 4}">- - stable</text>')
    out.append("</svg>")
    return "".join(out)
