"""`gatekeeper wait SERVICE --version V`: block until V is admitted and served, or failed.

For CD jobs: prints a progress line at each change; exit 0 when V passed its tests, the routing
policy routes it (stable, or canary in manual mode) and every live proxy that announces itself
in Consul (proxy-reloader --report-check) reports that its nginx serves it that way; 1 when its
tests failed, 4 when the time ran out first (the stack's shared exit codes, catalog.cli).

A proxy that has stopped saying it is alive (its `:alive` check critical: killed, or its host
gone) serves nothing and will apply nothing: it is named at once, with what to do, and not
waited for. Consul removes such a registration by itself ten minutes later.

Between looks it does not poll: it holds a Consul blocking query on the KV prefix where the next
change will come from (gatekeeper's verdicts and policies, then the proxies' reports), so the
answer follows the last proxy's report by a round trip, not by a polling interval.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

from catalog.cli import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
from catalog.kv_layout import GATEKEEPER, SERVED
from catalog.model import ERROR, FAILED, PASSED, ProxyState
from catalog.stores import Stores
from catalog.validation import InvalidValue

WAIT_OK, WAIT_FAILED, WAIT_TIMEOUT = EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT


def wait_for_version(stores: Stores, service: str, version: str, timeout: float,
                     say: Callable[[str], None] = print, longest_block: float = 1.0) -> int:
    """Reads the instances, verdicts, policies and proxies of `stores`. `longest_block` bounds
    each blocking query, so a change Consul KV does not see (an instance registered, a proxy
    appearing) is noticed within it."""
    deadline = time.monotonic() + timeout
    last: Optional[str] = None
    waits = {GATEKEEPER: stores.policies.wait_changes, SERVED: stores.proxies.wait_served}
    indexes: Dict[str, int] = {prefix: wait(0, 0) for prefix, wait in waits.items()}

    def progress(line: str) -> None:
        nonlocal last
        if line != last:
            say(line)
            last = line

    dead_named: set = set()

    def name_the_dead(proxies: List[ProxyState]) -> List[str]:
        """Each proxy that is not alive, said once: CD logs show why it is not waited for."""
        dead = [p for p in proxies if not p.alive]
        for p in dead:
            if p.id not in dead_named:
                dead_named.add(p.id)
                say(f"not waiting for proxy {p.id}: it is not alive ({p.note or 'heartbeat check critical'}); "
                    f"restart it, or if it is gone for good: consul services deregister -id={p.id}")
        return [p.id for p in dead]

    while True:
        proxies = stores.proxies.all()
        dead = name_the_dead(proxies)
        instances = [ri for ri in stores.instances.of(service) if ri.instance.version == version]
        verdicts = [stores.verdicts.get(ri.instance.id) for ri in instances]
        verdicts = [v for ri, v in zip(instances, verdicts) if v and v.applies_to(ri.instance)]
        try:
            policy = stores.policies.get(service)[1]
        except InvalidValue:
            policy = None
        passed = [v for v in verdicts if v.state == PASSED]
        failed = [v for v in verdicts if v.state in (FAILED, ERROR)]
        routed = policy is not None and version in (policy.stable, policy.canary)
        role = "stable" if policy and policy.stable == version else "canary"
        lagging = stores.proxies.lagging(service, role, version, proxies) if passed and routed else []
        if not instances:
            progress(f"{service} {version}: waiting for an instance to be registered")
        elif passed and routed and not lagging:
            role = "stable" if policy.stable == version else f"canary ({policy.weight}%)"
            said = f"{service} {version}: admitted and {role}: {passed[0].summary}"
            say(said + (f" (not confirmed by {len(dead)} proxy(ies) that are not alive: {', '.join(dead)})"
                        if dead else ""))
            return WAIT_OK
        elif passed and routed:
            progress(f"{service} {version}: routed by the policy; waiting for {len(lagging)} proxy(ies) to serve it: "
                     + ", ".join(lagging))
        elif failed and not passed:
            say(f"{service} {version}: tests {failed[0].state}: {failed[0].summary}")
            return WAIT_FAILED
        elif passed:
            progress(f"{service} {version}: tests passed ({passed[0].summary}); waiting for the routing policy")
        elif verdicts:
            progress(f"{service} {version}: {len(instances)} instance(s), tests running")
        else:
            progress(f"{service} {version}: {len(instances)} instance(s) registered, awaiting tests")
        left = deadline - time.monotonic()
        if left <= 0:
            say(f"{service} {version}: timed out after {timeout:.0f} s ({last})")
            return WAIT_TIMEOUT
        # The next change comes from the proxies once the policy routes a passed version,
        # from gatekeeper before that.
        prefix = SERVED if passed and routed else GATEKEEPER
        indexes[prefix] = waits[prefix](indexes[prefix], min(longest_block, left))

