"""Which admitted instances a service's traffic goes to, given its routing policy.

One function, used by proxy_reloader to render nginx and by `gatekeeper status` to report
what the proxy serves, so the two can never disagree.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

from .model import Instance, RegisteredInstance, RoutingPolicy
from .route_settings import hosts_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pool:
    version: str                     # "*" when the pool mixes versions (no usable policy)
    servers: Tuple[Tuple[str, int], ...]
    server_versions: Tuple[str, ...] = ()    # each server's own version, in the same order


@dataclass(frozen=True)
class Route:
    service: str
    path: str
    host: str
    stable: Optional[Pool]           # None: no admitted instance, the proxy answers 503
    canary: Optional[Pool] = None
    weight: int = 0                  # percent of traffic to the canary
    note: str = ""                   # why the route is not what the policy asked for
    strip_prefix: bool = False       # forward /path/rest as /rest
    settings: Tuple[Tuple[str, str], ...] = ()   # proxy.timeout and the like (catalog.route_settings)

    @property
    def hosts(self) -> Tuple[str, ...]:
        """The names the route answers; none: every name no other route claims."""
        return hosts_of(self.host)

    @property
    def upstream_name(self) -> str:
        return self.service.replace("-", "_")

    def to_dict(self) -> dict:
        """The route as gatekeeper status and proxy-reloader's status endpoint both show it."""
        def pool(p: Pool) -> dict:
            return {"version": p.version, "servers": [f"{a}:{port}" for a, port in p.servers]}
        return {"service": self.service, "path": self.path, "host": self.host, "strip_prefix": self.strip_prefix,
                "stable": pool(self.stable) if self.stable else None,
                "canary": {**pool(self.canary), "weight": self.weight} if self.canary else None,
                "answers_503": self.stable is None, "note": self.note, "settings": dict(self.settings)}


def _pool(version: str, instances: Sequence[Instance]) -> Pool:
    by_server = {(i.address, i.port): i.version for i in instances}
    servers = tuple(sorted(by_server))
    return Pool(version, servers, tuple(by_server[s] for s in servers))


def route_keys(inst: Instance) -> List[Tuple[str, str]]:
    """The (host name, path) pairs an instance's labels claim; "" is the default host. An
    instance registered for a UDP port claims none: nginx never routes to it."""
    if inst.udp:
        return []
    return [(host, inst.path) for host in hosts_of(inst.proxy_host) or ("",)]


def _defining(registered: Sequence[RegisteredInstance], admitted: Sequence[Instance],
              policy: Optional[RoutingPolicy]) -> Optional[Instance]:
    """Whose labels say where the route is and how it is served: the stable version's (a canary
    with other labels changes nothing until it is promoted), else the first admitted instance's,
    else the first registered one's."""
    if policy and policy.stable:
        for inst in admitted:
            if inst.version == policy.stable:
                return inst
    if admitted:
        return admitted[0]
    return registered[0].instance if registered else None


def route_for(service: str, registered: Sequence[RegisteredInstance],
              policy: Optional[RoutingPolicy]) -> Route:
    udp = [r for r in registered if r.instance.udp]
    if udp:                               # nginx proxies HTTP: a UDP port is registered, not routed
        registered = [r for r in registered if not r.instance.udp]
        if not registered:
            return Route(service, f"/{service}/", "", None,
                         note="UDP instances only: registered in Consul (tag udp), not proxied (nginx proxies HTTP)")
    admitted = [r.instance for r in registered if r.admitted]
    first = _defining(registered, admitted, policy)
    path = first.path if first else f"/{service}/"
    host = first.proxy_host if first else ""
    strip = first.strip_prefix if first else False
    route = partial(Route, service, path, host, strip_prefix=strip, settings=first.route_settings if first else ())
    panic = ""
    if not admitted:
        # Panic policy: when every instance fails a health check at once (a health-check
        # outage, say), keep serving those whose integration tests passed rather than nobody.
        # The gate itself is never overridden: an untested or failed instance gets nothing.
        admitted = [r.instance for r in registered if r.gate_status == "passing"]
        if not admitted:
            return route(None)
        panic = "panic: every instance fails a health check; serving those that passed their tests"
    by_version: Dict[str, List[Instance]] = {}
    for inst in admitted:
        by_version.setdefault(inst.version, []).append(inst)
    if panic:
        version = policy.stable if policy and policy.stable in by_version else "*"
        pool = by_version[version] if version != "*" else admitted
        return route(_pool(version, pool), note=panic)
    if policy is None or not policy.stable:
        return route(_pool("*", admitted), note="no routing policy yet: every admitted instance serves")
    if policy.stable not in by_version:
        # Panic policy: the stable version has no admitted instance left; serving the others
        # beats answering nobody.
        return route(_pool("*", admitted),
                     note=f"stable version {policy.stable} has no admitted instance: every admitted instance serves")
    stable = _pool(policy.stable, by_version[policy.stable])
    canary = None
    if policy.canary and policy.canary != policy.stable and policy.canary in by_version:
        canary = _pool(policy.canary, by_version[policy.canary])
    return route(stable, canary, policy.weight if canary else 0)


def _route_labels(inst: Instance) -> Dict[str, str]:
    labels = {"path": inst.path, "host": inst.proxy_host or "-", "strip_prefix": str(inst.strip_prefix).lower()}
    labels.update(inst.route_settings)
    return labels


def pending_route_change(registered: Sequence[RegisteredInstance],
                         policy: Optional[RoutingPolicy]) -> Dict[str, Tuple[str, str]]:
    """How the canary's route labels differ from the stable version's: {label: (now, after
    promotion)}. The route keeps the stable version's until the canary is promoted."""
    if not policy or not policy.stable or not policy.canary or policy.canary == policy.stable:
        return {}
    admitted = [r.instance for r in registered if r.admitted]
    stable = next((i for i in admitted if i.version == policy.stable), None)
    canary = next((i for i in admitted if i.version == policy.canary), None)
    if stable is None or canary is None:
        return {}
    now, later = _route_labels(stable), _route_labels(canary)
    return {k: (now.get(k, "-"), later.get(k, "-")) for k in sorted(set(now) | set(later))
            if now.get(k, "-") != later.get(k, "-")}
