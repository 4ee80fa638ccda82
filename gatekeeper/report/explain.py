"""Why an instance gets traffic or not, in one sentence: for `status`, `why` and their --json.

Pure functions of what Consul holds (the instance's checks, its verdict, the policy and the
route computed by catalog.routing), so `status`, `why` and the proxy never tell different stories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from catalog.model import ERROR, FAILED, TESTING, RegisteredInstance, RoutingPolicy, Verdict
from catalog.routing import Route


@dataclass(frozen=True)
class Explanation:
    serving: bool
    state: str        # one word or two for a table: stable, canary 20%, aborted, tests failed, ...
    why: str          # the sentence

    def to_dict(self) -> dict:
        return {"serving": self.serving, "state": self.state, "why": self.why}


def explain_instance(ri: RegisteredInstance, verdict: Optional[Verdict], policy: Optional[RoutingPolicy],
                     route: Route) -> Explanation:
    inst = ri.instance
    service, version = inst.service, inst.version
    if verdict is not None and not verdict.applies_to(inst):
        verdict = None                                   # a verdict of an earlier container
    if verdict is None:
        if inst.docker_health and ri.checks.get(inst.docker_health_check_id) != "passing":
            return Explanation(False, "waiting for health",
                               "waiting for Docker to report the container healthy; it is tested after that")
        return Explanation(False, "awaiting tests", "registered; awaiting its integration tests")
    if verdict.state == TESTING:
        return Explanation(False, "testing", f"integration tests running ({verdict.summary})")
    if verdict.state in (FAILED, ERROR):
        fix = (f"; set one with `gatekeeper tests {service} IMAGE` and it is tested at once"
               if verdict.lacked_test_image else
               f"; fix and redeploy, or `gatekeeper retest {inst.id}`")
        return Explanation(False, f"tests {verdict.state}", f"tests {verdict.state}: {verdict.summary}{fix}")
    if ri.gate_status != "passing":
        return Explanation(False, "gate closed", f"tests passed but the gate is {ri.gate_status} "
                                                 f"({ri.gate_output or 'no output'}); gatekeeper re-applies it")
    failing = sorted(f"{cid.rsplit(':', 1)[-1]} {st}" for cid, st in ri.checks.items()
                     if st != "passing" and cid != inst.gate_check_id)
    server = (inst.address, inst.port)
    in_stable = route.stable is not None and server in route.stable.servers
    in_canary = route.canary is not None and server in route.canary.servers
    if failing and not (in_stable or in_canary):
        return Explanation(False, "unhealthy", "passed its tests but a health check fails: " + ", ".join(failing))
    if in_canary:
        if route.weight == 0:
            return Explanation(True, "canary 0%", "the canary at 0%: only requests with X-Canary: always "
                                                  "(or the cookie canary=always) reach it")
        return Explanation(True, f"canary {route.weight}%", f"the canary: {route.weight}% of clients reach it")
    if in_stable:
        if route.note:
            return Explanation(True, "serving", route.note)
        return Explanation(True, "stable", f"the stable version ({route.stable.version}): every client "
                                           "not sent to a canary reaches it")
    if policy is not None and policy.aborted == version:
        return Explanation(False, "aborted", f"the canary {version} was aborted; `gatekeeper canary {service} "
                                             f"{version}` tries it again")
    if policy is not None and policy.previous == version:
        return Explanation(False, "previous", f"the previous stable version, kept for `gatekeeper rollback "
                                              f"{service}`; {policy.stable} is stable")
    routed = f"stable {policy.stable or '-'}, canary {policy.canary or '-'}" if policy else "no policy"
    return Explanation(False, "not routed", f"admitted, but the policy routes other versions ({routed}); "
                                            f"`gatekeeper canary {service} {version}` makes it a canary")


def proxy_answer(registered_count: int, route: Optional[Route]) -> str:
    """What a request for the service's path gets from the proxy."""
    if registered_count == 0 or route is None:
        return "404: no instance is registered, so the proxy has no route for it"
    if route.stable is None:
        return "503 \"no admitted instance\": instances are registered but none passed its gate"
    text = f"{route.stable.version if route.stable.version != '*' else 'every admitted version'}"
    if route.canary:
        text += f", canary {route.canary.version} at {route.weight}%"
    return f"200 from {text}"

