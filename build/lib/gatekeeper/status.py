"""`gatekeeper status`: versions, instances, verdicts and what the proxy serves, per service."""
from __future__ import annotations

import time
from typing import List, Optional

from catalog.model import RegisteredInstance
from catalog.routing import route_for
from catalog.validation import InvalidValue


def service_status(store, service: str) -> dict:
    registered: List[RegisteredInstance] = store.instances(service)
    policy_error = ""
    try:
        _, policy = store.policy(service)
    except InvalidValue as exc:
        policy, policy_error = None, str(exc)
    route = route_for(service, registered, policy)
    serving = set(route.stable.servers if route.stable else ()) | set(route.canary.servers if route.canary else ())
    instances = []
    for ri in sorted(registered, key=lambda r: (r.instance.version, r.instance.id)):
        inst = ri.instance
        verdict = store.verdict(inst.id)
        if verdict and not verdict.applies_to(inst):
            verdict = None
        instances.append({
            "id": inst.id, "version": inst.version, "address": inst.address, "port": inst.port,
            "container": inst.container_name, "gate": ri.gate_status,
            "verdict": verdict.state if verdict else "pending",
            "summary": verdict.summary if verdict else (ri.gate_output or "awaiting integration tests"),
            "tests_seconds": round(verdict.duration, 2) if verdict else None,
            "serving": (inst.address, inst.port) in serving,
        })
    return {
        "service": service,
        "policy": {"mode": policy.mode, "stable": policy.stable, "canary": policy.canary,
                   "weight": policy.weight, "previous": policy.previous} if policy else None,
        "policy_error": policy_error,
        "route": route.to_dict(),
        "instances": instances,
    }


def collect(store, service: Optional[str]) -> dict:
    names = [service] if service else [n for n, found in store.all_instances().items() if found]
    return {"services": [service_status(store, n) for n in names], "rejected": store.rejections(),
            "time": time.time()}


def render_text(data: dict) -> str:
    out = []
    for s in data["services"]:
        p, r = s["policy"], s["route"]
        out.append(f"service {s['service']}  (path {r['path']}{'  host ' + r['host'] if r['host'] else ''})")
        if p:
            out.append(f"  policy   mode {p['mode']}, stable {p['stable'] or '-'}, canary {p['canary'] or '-'}"
                       f" (weight {p['weight']}%), previous {p['previous'] or '-'}")
        elif s["policy_error"]:
            out.append(f"  policy   INVALID: {s['policy_error']}")
        else:
            out.append("  policy   none yet (set when the first instance passes its tests)")
        if r["stable"]:
            line = f"  serving  {r['stable']['version']} on {', '.join(r['stable']['servers'])}"
            if r["canary"]:
                line += f"; canary {r['canary']['version']} ({r['canary']['weight']}%) on {', '.join(r['canary']['servers'])}"
            out.append(line)
        else:
            out.append("  serving  nothing: no admitted instance (the proxy answers 503)")
        if r["note"]:
            out.append(f"  note     {r['note']}")
        rows = [("INSTANCE", "VERSION", "ADDRESS", "GATE", "VERDICT", "TESTS", "SERVING", "SUMMARY")]
        for i in s["instances"]:
            rows.append((i["id"], i["version"], f"{i['address']}:{i['port']}", i["gate"], i["verdict"],
                         f"{i['tests_seconds']:.1f}s" if i["tests_seconds"] is not None else "-",
                         "yes" if i["serving"] else "no", i["summary"]))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
        for row in rows:
            out.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        out.append("")
    if not data["services"]:
        out.append("no services registered")
    for name, rej in sorted(data["rejected"].items()):
        out.append(f"rejected container {name}: {rej.get('reason', '')}")
    return "\n".join(out).rstrip() + "\n"
