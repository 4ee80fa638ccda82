"""`gatekeeper status` and `gatekeeper why`: what the stack knows about each service, and why
each instance gets traffic or not.

`status` lists every service the stack knows: with instances, with only a policy or a default
test image, or with only rejected containers, and for each of a route's host names the
certificate in Consul that HTTPS handshakes for it get. `why` adds, per instance, the verdict's detail
(test image, duration, the output's tail), every check, and what each proxy reports serving.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional

from catalog.certificates import describe, serving
from catalog.errors import Refused
from catalog.model import RUNNING, containers_in_words, Analysis, AnalysisState, Rejection, RegisteredInstance, RoutingPolicy
from catalog.routing import pending_route_change, route_for
from catalog.stores import InstanceStore, Stores
from catalog.stores.certificates import entries_from_kv
from catalog.validation import InvalidValue

from ..promotion.analysis import ms, pct
from ..fleet.autoscaler import admitted_tasks, settings_of
from ..fleet.swarm import SwarmError, SwarmUnavailable
from .explain import explain_instance, proxy_answer


class UnknownTarget(Refused):
    """No service, instance or rejected container by that name."""


def known_services(stores: Stores, rejections: Dict[str, Rejection]) -> List[str]:
    names = {n for n, found in stores.instances.all().items() if found} | set(stores.policies.services())
    names |= {r.service for r in rejections.values() if r.service}
    return sorted(names)


def certificates_view(stores: Stores) -> Dict[str, dict]:
    """Each certificate in Consul, as its chain describes it (gatekeeper may not read the keys)."""
    return {name: describe(name, e.chain, e.source) for name, e in entries_from_kv(stores.certificates.chains()).items()}


def https_view(hosts, certificates: Dict[str, dict]) -> Dict[str, Optional[dict]]:
    """Each of a route's host names ("" for a route on every name) -> the certificate in Consul that
    a handshake for it gets (exact, wildcard, default), or None; nothing at all while Consul holds
    no certificate (a stack that serves plain HTTP only)."""
    out = {}
    if not certificates:
        return out
    for host in hosts or ("",):
        name = serving(certificates, host) if host else ("default" if "default" in certificates else None)
        out[host] = certificates[name] if name else None
    return out


def service_status(stores: Stores, service: str, rejections: Dict[str, Rejection], detail: bool = False,
                   replicas: Optional[Callable[[str, list], Optional[dict]]] = None,
                   healing: Optional[Dict[str, dict]] = None,
                   certificates: Optional[Dict[str, dict]] = None) -> dict:
    registered: List[RegisteredInstance] = stores.instances.of(service)
    policy_error = ""
    try:
        _, policy = stores.policies.get(service)
    except InvalidValue as exc:
        policy, policy_error = None, str(exc)
    route = route_for(service, registered, policy)
    instances = []
    for ri in sorted(registered, key=lambda r: (r.instance.version, r.instance.id)):
        inst = ri.instance
        verdict = stores.verdicts.get(inst.id)
        if verdict and not verdict.applies_to(inst):
            verdict = None
        why = explain_instance(ri, verdict, policy, route)
        row = {
            "id": inst.id, "host": inst.node, "version": inst.version, "address": inst.address, "port": inst.port,
            "container": inst.container_name, "gate": ri.gate_status, "admitted": ri.admitted,
            "verdict": verdict.state if verdict else "pending",
            "summary": verdict.summary if verdict else (ri.gate_output or "awaiting integration tests"),
            "tests_seconds": round(verdict.duration, 2) if verdict else None,
            "serving": why.serving, "state": why.state, "why": why.why,
        }
        if inst.swarm_service:
            row["swarm_service"] = inst.swarm_service
        if (healing or {}).get(inst.id):
            h = healing[inst.id]
            row["healing"] = {"tries": h.get("tries", 0), "gave_up": bool(h.get("gave_up")),
                              "reason": h.get("reason", "")}
        if detail:
            row.update(checks=dict(ri.checks), gate_output=ri.gate_output,
                       tests_image=(verdict.tests_image if verdict else inst.tests_image) or "",
                       log_tail=verdict.log_tail if verdict else "",
                       tested_at=verdict.finished if verdict else None)
        instances.append(row)
    out = {
        "service": service,
        "policy": {"mode": policy.mode, "stable": policy.stable, "canary": policy.canary,
                   "weight": policy.weight, "previous": policy.previous,
                   "aborted": policy.aborted} if policy else None,
        "policy_error": policy_error,
        "route": route.to_dict(),
        "pending_route_change": {k: {"now": a, "after_promotion": b}
                                 for k, (a, b) in pending_route_change(registered, policy).items()},
        "proxy_answers": proxy_answer(len(registered), route),
        "instances": instances,
        "rejected": {name: _rejection_dict(r) for name, r in sorted(rejections.items()) if r.service == service},
    }
    state = stores.analysis.get(service)
    out["analysis"] = analysis_view(state, policy) if state else None
    waiting = stores.policies.rollback(service)[1]
    out["rollback"] = {"version": waiting.version, "replacing": waiting.replacing, "by": waiting.by,
                       "asked": waiting.asked, "deadline": waiting.deadline, "started": waiting.started,
                       "containers": [{"name": c["name"], "node": c["node"]} for c in waiting.containers]} \
        if waiting else None
    out["https"] = https_view(route.hosts, certificates if certificates is not None else certificates_view(stores))
    out["replicas"] = replicas(service, registered) if replicas else None
    if detail:
        out["default_tests"] = stores.policies.tests_image(service)
        proxies = stores.proxies.all()
        out["proxies"] = {p.id: stores.proxies.served(p.id, service) for p in proxies}
        out["proxies_not_alive"] = {p.id: p.note for p in proxies if not p.alive}
    return out


def analysis_view(state: AnalysisState, policy: Optional[RoutingPolicy], now: Optional[float] = None) -> dict:
    """Where a progressive analysis stands, for people and programs: each metric's last value
    beside its threshold, failed checks so far, and when the next check comes."""
    settings = policy.analysis if policy else Analysis()
    last = state.last
    running = state.status == RUNNING and policy is not None and policy.canary == state.version
    return {
        "version": state.version, "status": state.status if state.status != RUNNING or running else "stopped",
        "weight": state.weight, "step": settings.step, "max_weight": settings.max_weight,
        "failed": state.failed, "threshold": settings.threshold, "checks": len(state.checks),
        "next_check_in": round(max(0.0, state.next_check - (time.time() if now is None else now)), 1)
        if running else None,
        "reason": state.reason,
        "thresholds": {"success_rate": settings.success_rate, "p99_ms": settings.p99_ms,
                       "min_requests": settings.min_requests, "interval": settings.interval},
        "last": asdict(last) if last else None,
    }


def analysis_lines(a: dict) -> List[str]:
    t = a["thresholds"]
    head = f"analysis {a['version']}: {a['status']}"
    if a["status"] == RUNNING:
        head += (f" at {a['weight']}% (step {a['step']}% up to {a['max_weight']}%), failed checks "
                 f"{a['failed']} of {a['threshold']}, next check in {a['next_check_in']:.0f} s")
    lines = [head]
    last = a["last"]
    for who in ("canary", "stable"):
        m = last.get(who) if last else None
        if m:
            lines.append(f"  {who + ':':8} {m['requests']:.0f} requests in {t['interval']:g} s (at least "
                         f"{t['min_requests']}), success {pct(m['success_rate'])} (at least {t['success_rate']:g} %), "
                         f"p99 {ms(m['p99_ms'])} (at most {t['p99_ms']:g} ms)")
    if a["reason"]:
        lines.append(f"  last:    {a['reason']}")
    return lines


def history_details(entry: dict) -> str:
    """One history entry's details in words; an analysis step shows its figures."""
    if entry.get("event") == "analysis":
        figures = "; ".join(f"{who} {m['requests']:.0f} req, success {pct(m['success_rate'])}, p99 {ms(m['p99_ms'])}"
                            for who in ("canary", "stable") for m in [entry.get(who)] if m)
        return (f"{entry.get('version', '?')} at {entry.get('weight', '?')}%: {entry.get('result', '?')}: "
                f"{entry.get('reason', '')}" + (f" [{figures}]" if figures else ""))
    if entry.get("event") == "analysis started":
        s = entry.get("settings") or {}
        return (f"{entry.get('version', '?')} at {entry.get('weight', '?')}%: every {s.get('interval', '?')} s "
                f"+{s.get('step', '?')}% up to {s.get('max_weight', '?')}% while success >= "
                f"{s.get('success_rate', '?')}% and p99 <= {s.get('p99_ms', '?')} ms (min {s.get('min_requests', '?')} "
                f"requests), rollback after {s.get('threshold', '?')} failed checks")

    def words(k, v):
        if k == "containers" and isinstance(v, list):      # drained, rollback asked: name on host
            return containers_in_words(v)
        return v
    return ", ".join(f"{k} {words(k, v)}" for k, v in sorted(entry.items()) if k not in ("time", "event") and v != "")


def _rejection_dict(r: Rejection) -> dict:
    return {"reason": r.reason, "container_id": r.container_id, "service": r.service,
            "registered_by": r.registered_by, "time": r.time}


def replicas_view(stores: Stores, swarm) -> Callable[[str, list], Optional[dict]]:
    """A Swarm service's replicas for `status`: desired (Swarm's spec), running tasks, admitted
    instances, its bounds and targets, and the last change with its reason. An engine that does
    not answer or refuses (joining or leaving a swarm) is asked once per `status`: a service with
    Swarm tasks gets {"error": why} in place of its replicas, any other no replicas."""
    failed: List[str] = []

    def view(service: str, registered: list) -> Optional[dict]:
        tasks = any(ri.instance.swarm_service for ri in registered)
        if failed:
            return {"error": failed[0]} if tasks else None
        try:
            svc = swarm.service(service)
            running = swarm.running_tasks(svc) if svc is not None else 0
        except (SwarmError, SwarmUnavailable) as exc:
            failed.append(str(exc))
            return {"error": failed[0]} if tasks else None
        if svc is None:
            return None
        try:
            scale, scale_error = asdict(settings_of(svc)), ""
        except InvalidValue as exc:
            scale, scale_error = None, str(exc)
        return {"swarm_service": svc.name, "desired": svc.replicas, "running": running,
                "admitted": admitted_tasks(registered, svc.name), "update": svc.update_state,
                "image": svc.image, "scale": scale, "scale_error": scale_error, "last_change": stores.scaling.get(service)}
    return view


def collect(stores: Stores, service: Optional[str], swarm=None) -> dict:
    rejections = stores.rejections.all()
    names = [service] if service else known_services(stores, rejections)
    healing = stores.healing.all()
    view = replicas_view(stores, swarm) if swarm is not None else None
    certificates = certificates_view(stores)
    return {"services": [service_status(stores, n, rejections, replicas=view, healing=healing,
                                        certificates=certificates) for n in names],
            "rejected": {name: _rejection_dict(r) for name, r in sorted(rejections.items())},
            "time": time.time()}


def collect_why(stores: Stores, target: str) -> dict:
    """`why`: a service (every instance) or one instance or one rejected container, in detail."""
    rejections = stores.rejections.all()
    if target in rejections and target not in known_services(stores, rejections):
        return {"rejected": {target: _rejection_dict(rejections[target])}, "services": []}
    if is_instance_id(target):
        ri = find_instance(stores.instances, target)
        if ri is None:
            raise UnknownTarget(f"no instance {target!r} is registered; `gatekeeper status` lists them")
        s = service_status(stores, ri.instance.service, rejections, detail=True)
        s["instances"] = [i for i in s["instances"] if i["id"] == target]
        return {"services": [s], "rejected": {}}
    require_known(stores, target, rejections)
    return {"services": [service_status(stores, target, rejections, detail=True, healing=stores.healing.all())],
            "rejected": {}}


def is_instance_id(target: str) -> bool:
    """Instance ids are HOST:CONTAINER:PORT; service names have no ':'."""
    return target.count(":") >= 2


def find_instance(instances: InstanceStore, instance_id: str) -> Optional[RegisteredInstance]:
    """A registered instance by id, whatever its service (ids do not name the service)."""
    return next((ri for found in instances.all().values() for ri in found
                 if ri.instance.id == instance_id), None)


def require_known(stores: Stores, service: str, rejections: Optional[Dict[str, Rejection]] = None) -> None:
    """UnknownTarget, naming the known services, unless the stack knows `service` somehow."""
    if service in stores.instances.service_names() or stores.policies.get(service)[1] is not None:
        return
    rejections = stores.rejections.all() if rejections is None else rejections
    known = known_services(stores, rejections)
    if service not in known:
        raise UnknownTarget(f"unknown service {service!r} (known: {', '.join(known) or 'none'})")


def render_text(data: dict) -> str:
    out = []
    for s in data["services"]:
        p, r = s["policy"], s["route"]
        out.append(f"service {s['service']}  (path {r['path']}{'  host ' + r['host'] if r['host'] else ''})")
        if p:
            line = (f"  policy   mode {p['mode']}, stable {p['stable'] or '-'}, canary {p['canary'] or '-'}"
                    f" (weight {p['weight']}%), previous {p['previous'] or '-'}")
            out.append(line + (f", aborted {p['aborted']}" if p.get("aborted") else ""))
        elif s["policy_error"]:
            out.append(f"  policy   INVALID: {s['policy_error']}")
        else:
            out.append("  policy   none yet (set when the first instance passes its tests)")
        out.append(f"  proxy    answers {s['proxy_answers']}")
        for host, cert in (s.get("https") or {}).items():
            out.append(f"  https    {host or 'any host'}: " + https_line(cert))
        if s.get("analysis"):
            first, *rest = analysis_lines(s["analysis"])
            out.append(f"  {first}")
            out.extend(f"  {line}" for line in rest)
        if s.get("replicas"):
            out.extend(replica_lines(s["replicas"]))
        if s.get("rollback"):
            out.append(f"  rollback {rollback_line(s['rollback'])}")
        if r["note"]:
            out.append(f"  note     {r['note']}")
        if s.get("pending_route_change"):
            out.append(f"  pending  {pending_line(s)}")
        if s["instances"]:
            rows = [("INSTANCE", "HOST", "VERSION", "ADDRESS", "GATE", "VERDICT", "TESTS", "SERVING", "SUMMARY")]
            for i in s["instances"]:
                rows.append((i["id"], i["host"] or "-", i["version"], f"{i['address']}:{i['port']}", i["gate"], i["verdict"],
                             f"{i['tests_seconds']:.1f}s" if i["tests_seconds"] is not None else "-",
                             ("yes: " if i["serving"] else "no: ") + i["state"], i["summary"]))
            widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
            for row in rows:
                out.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        for i in s["instances"]:
            if i.get("healing"):
                h = i["healing"]
                out.append(f"  healing  {i['id']}: {'GAVE UP: ' if h['gave_up'] else ''}{h['reason']}")
        for name, rej in s["rejected"].items():
            out.append(f"  rejected container {name}: {rej['reason']}")
        out.append("")
    if not data["services"]:
        out.append("no services known")
    shown = {n for s in data["services"] for n in s["rejected"]}
    for name, rej in sorted(data["rejected"].items()):
        if name not in shown:
            out.append(f"rejected container {name}: {rej['reason']}")
    return "\n".join(out).rstrip() + "\n"


def https_line(cert: Optional[dict]) -> str:
    if cert is None:
        return "no certificate in Consul (a proxy's --cert-dir may have one: its /status says)"
    if "error" in cert:
        return f"certificate {cert['name']} ({cert['source']}): {cert['error']}"
    return (f"certificate {cert['name']} ({cert['source']}), issuer {cert['issuer']}, until {cert['not_after']} "
            f"({cert['days_left']:g} days left)")


def replica_lines(r: dict) -> List[str]:
    if "error" in r:
        return [f"  replicas unknown: {r['error']}"]
    desired = "global" if r["desired"] is None else r["desired"]
    line = (f"  replicas desired {desired}, running {r['running']}, admitted {r['admitted']} "
            f"(Swarm service {r['swarm_service']}, {r['image']}")
    sc = r["scale"]
    if sc:
        targets = [f"{sc['rps']:g} req/s per instance" if sc["rps"] else "",
                   f"p99 {sc['p99_ms']:g} ms" if sc["p99_ms"] else ""]
        line += f"; bounds {sc['min']}..{sc['max']}"
        line += f", autoscaled to {' and '.join(t for t in targets if t)}" if any(targets) else ", scaled by hand"
    line += ")"
    out = [line]
    if r["scale_error"]:
        out.append(f"  scaling  INVALID gatekeeper.scale label: {r['scale_error']}")
    if r["update"] and r["update"] != "completed":
        out.append(f"  update   {r['update']}")
    last = r.get("last_change")
    if last:
        out.append(f"  scaled   {_when(last.get('time'))} {last.get('previous', '?')} -> {last.get('replicas', '?')} "
                   f"by {last.get('by', '?')}: {last.get('reason', '')}")
    return out


def rollback_line(b: dict, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    names = containers_in_words(b["containers"])
    step = "asked its hosts to start" if b["started"] else "about to ask its hosts to start"
    return (f"to {b['version']} (asked by {b['by']} {max(0.0, now - b['asked']):.0f} s ago): {step} {names}; "
            f"{b['version']} becomes stable once one passes its tests again (given up in "
            f"{max(0.0, b['deadline'] - now):.0f} s)")


def pending_line(s: dict) -> str:
    changes = "; ".join(f"proxy.{label} {c['now']} -> {c['after_promotion']}"
                        for label, c in s["pending_route_change"].items())
    return (f"canary {s['policy']['canary']}'s route labels differ, in effect once it is promoted: {changes}")


def render_why(data: dict) -> str:
    out = []
    for name, rej in data["rejected"].items():
        out.append(f"container {name} was not registered: {rej['reason']}")
        out.append(f"  (recorded by {rej['registered_by'] or '?'} at {_when(rej['time'])}; fix the label and "
                   "run the container again)")
    for s in data["services"]:
        out.append(f"service {s['service']}: the proxy answers {s['proxy_answers']}")
        p = s["policy"]
        if p:
            out.append(f"  policy: mode {p['mode']}, stable {p['stable'] or '-'}, canary {p['canary'] or '-'} "
                       f"at {p['weight']}%, previous {p['previous'] or '-'}"
                       + (f", aborted {p['aborted']}" if p["aborted"] else ""))
        elif s["policy_error"]:
            out.append(f"  policy: INVALID: {s['policy_error']}")
        else:
            out.append("  policy: none yet (set when the first instance passes its tests)")
        if s.get("analysis"):
            out.extend(f"  {line}" for line in analysis_lines(s["analysis"]))
        if s.get("pending_route_change"):
            out.append(f"  route: {pending_line(s)}")
        out.append(f"  default test image: {s.get('default_tests') or 'none'}")
        for proxy, served in sorted(s.get("proxies", {}).items()):
            what = (f"stable {served['stable'] or '-'}, canary {served['canary'] or '-'} at {served['weight']}%"
                    if served else "nothing")
            dead = s.get("proxies_not_alive", {}).get(proxy)
            out.append(f"  proxy {proxy} serves {what}" + (f" (NOT ALIVE: {dead})" if dead is not None else ""))
        for i in s["instances"]:
            out.append(f"  instance {i['id']} ({i['version']}, container {i['container']}, "
                       f"{i['address']}:{i['port']})")
            out.append(f"    {'SERVING' if i['serving'] else 'NOT SERVING'}: {i['why']}")
            secs = f" in {i['tests_seconds']:.1f} s" if i["tests_seconds"] is not None else ""
            when = f" at {_when(i['tested_at'])}" if i.get("tested_at") else ""
            out.append(f"    verdict: {i['verdict']}{secs}{when} with {i.get('tests_image') or 'no test image'}: "
                       f"{i['summary']}")
            out.append("    checks: " + ", ".join(f"{cid.rsplit(':', 1)[-1]} {st}"
                                                  for cid, st in sorted(i.get("checks", {}).items())))
            tail = (i.get("log_tail") or "").strip()
            if tail:
                out.append("    test output (last lines):")
                out.extend("      " + line for line in tail.splitlines()[-15:])
        for name, rej in s["rejected"].items():
            out.append(f"  container {name} was not registered: {rej['reason']}")
        if not s["instances"] and not s["rejected"]:
            out.append("  no instance is registered")
    return "\n".join(out).rstrip() + "\n"


def _when(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"
