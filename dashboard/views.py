"""What the pages show, read from Consul with the logged-in token (and from Prometheus): the
same facts `gatekeeper status`, `why` and `history` print, shaped for a page.

Every function here blocks (python-consul2, requests); the server calls them in a thread.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Dict, List, Optional

from catalog.consul_client import ACLPermissionDenied
from catalog.kv_layout import POLICIES
from catalog.stores import Stores
from gatekeeper.prometheus import MetricsUnavailable, Prometheus, Traffic
from gatekeeper.report.status import collect, history_details, require_known, service_status

from .chart import last_rollout, svg

# A check-and-set write that can never succeed (no key is at index 1), so it changes nothing:
# Consul answers it when the token may write routing policies and refuses it otherwise.
WRITE_PROBE = f"{POLICIES}.dashboard-write-probe"
TRAFFIC_WINDOW = 60.0


# Consul's anonymous token: its secret is the word "anonymous", which anybody can type; it is
# what requests without a token act as, never a login
ANONYMOUS = "00000000-0000-0000-0000-000000000002"


class AnonymousToken(ACLPermissionDenied):
    """The token given at the login is Consul's anonymous one."""


def who_is(stores: Stores) -> tuple:
    """(the token's description, whether it may write routing policies); ACLPermissionDenied
    when Consul does not know the token, or it is the anonymous token."""
    me = stores.consul.token_self()
    if me["accessor"] == ANONYMOUS:
        raise AnonymousToken("the anonymous token is no login")
    return (me["description"] or f"token {me['accessor'][:8]}"), may_write_policies(stores)


def may_write_policies(stores: Stores) -> bool:
    try:
        stores.consul.kv_put(WRITE_PROBE, "", cas=1)
    except ACLPermissionDenied:
        return False
    return True


def badge(s: dict) -> tuple:
    """(state in words, css class) of a service, most pressing first."""
    p = s["policy"]
    if s["policy_error"]:
        return "invalid policy", "bad"
    if not any(i["serving"] for i in s["instances"]):
        return "no admitted instance", "bad"
    if any((i.get("healing") or {}).get("gave_up") for i in s["instances"]):
        return "gave up healing", "bad"
    if s.get("rollback"):
        return f"rolling back to {s['rollback']['version']}", "warn"
    if s.get("analysis") and s["analysis"]["status"] == "running":
        return f"canary in analysis at {s['analysis']['weight']}%", "warn"
    if p and p["canary"]:
        return f"canary {p['canary']} at {p['weight']}%", "warn"
    if p and p["aborted"]:
        return f"rolled back ({p['aborted']} aborted)", "warn"
    return "serving", "ok"


def per_host(instances: List[dict]) -> Dict[str, str]:
    """host -> "admitted/total" of the service's instances on it."""
    total = Counter(i["host"] or "?" for i in instances)
    admitted = Counter(i["host"] or "?" for i in instances if i["admitted"])
    return {host: f"{admitted[host]}/{n}" for host, n in sorted(total.items())}


def traffic_of(prometheus: Optional[Prometheus]) -> tuple:
    """({service: Traffic}, a problem in words or "")."""
    if prometheus is None:
        return {}, "no Prometheus: start the dashboard with --prometheus URL to see traffic"
    try:
        return prometheus.traffic(TRAFFIC_WINDOW), ""
    except MetricsUnavailable as exc:
        return {}, f"traffic figures unavailable: {exc}"


def overview(stores: Stores, prometheus: Optional[Prometheus]) -> dict:
    data = collect(stores, None)
    traffic, traffic_problem = traffic_of(prometheus)
    rows = []
    for s in data["services"]:
        p = s["policy"] or {}
        state, tone = badge(s)
        t: Optional[Traffic] = traffic.get(s["service"])
        rows.append({"name": s["service"], "mode": p.get("mode", "-"), "stable": p.get("stable") or "-",
                     "canary": p.get("canary") or "", "weight": p.get("weight", 0),
                     "hosts": per_host(s["instances"]),
                     "admitted": sum(1 for i in s["instances"] if i["admitted"]),
                     "total": len(s["instances"]), "state": state, "tone": tone,
                     "rps": t.rps if t else None, "success_rate": t.success_rate if t else None,
                     "p99_ms": t.p99_ms if t else None})
    return {"services": rows, "rejected": data["rejected"], "traffic_problem": traffic_problem,
            "traffic_window": TRAFFIC_WINDOW, "time": time.time()}


def details(entry: dict) -> str:
    """An entry's details in words; one damaged by hand shown as it is."""
    try:
        return history_details(entry)
    except (TypeError, ValueError, KeyError, AttributeError):
        return json.dumps(entry, sort_keys=True, default=str)[:500]


def service_page(stores: Stores, name: str) -> dict:
    """One service in detail; UnknownTarget when the stack knows no such service."""
    rejections = stores.rejections.all()
    require_known(stores, name, rejections)
    s = service_status(stores, name, rejections, detail=True, healing=stores.healing.all())
    s["state"], s["tone"] = badge(s)
    # history entries are JSON operators may write: keep the objects, each field as it comes
    history = [e for e in stores.history.of(name) if isinstance(e, dict)]
    rollout = last_rollout(history)
    swarm = sorted({i["swarm_service"] for i in s["instances"] if i.get("swarm_service")})
    return {
        "s": s,
        "history": [{"time": e.get("time"), "event": str(e.get("event", "?")), "details": details(e)}
                    for e in reversed(history)],
        "rollout": rollout, "chart": svg(rollout) if rollout else "",
        "swarm": {"services": swarm,
                  "admitted": sum(1 for i in s["instances"] if i.get("swarm_service") and i["admitted"]),
                  "registered": sum(1 for i in s["instances"] if i.get("swarm_service")),
                  "last_change": stores.scaling.get(name)} if swarm else None,
        "time": time.time(),
    }
