"""What to route, from Consul's data: each service's instances and routing policy -> a Route.

Values are re-checked against the allow-list here, because anyone with write access to Consul
could have written them: an invalid service is left out (and reported), the others go on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from catalog import route_settings, validation as v
from catalog.model import RegisteredInstance
from catalog.kv_layout import POLICIES
from catalog.routing import Route, route_for
from catalog.stores import InstanceStore, PolicyStore
from catalog.validation import InvalidValue, parse_policy

log = logging.getLogger(__name__)


@dataclass
class View:
    routes: List[Route]
    errors: Dict[str, str] = field(default_factory=dict)     # service -> why it was left out


def _check_instance(inst) -> None:
    v.check("service", inst.service)
    v.check("address", inst.address)
    v.check_port("port", inst.port)
    v.check("version", inst.version)
    v.check("proxy_path", inst.path)
    if inst.proxy_host:
        route_settings.check_canonical_hosts("proxy_host", inst.proxy_host)
    route_settings.check_all(inst.route_settings)


def route_of(service: str, registered: Optional[Sequence[RegisteredInstance]],
             policy_raw: Optional[str]) -> Tuple[Optional[Route], Optional[str]]:
    """(route, None), (None, why it is left out), or (None, None) for a service with no
    registered instance (it has no route at all: nginx answers 404 at its path)."""
    try:
        policy = parse_policy(policy_raw) if policy_raw else None
    except InvalidValue as exc:
        return None, f"{POLICIES}{service}: {exc}"
    return _route(service, registered, policy)


def _route(service, registered, policy) -> Tuple[Optional[Route], Optional[str]]:
    registered = [ri for ri in registered or () if not ri.instance.udp]     # nginx proxies HTTP only
    if not registered:
        return None, None
    try:
        for ri in registered:
            _check_instance(ri.instance)
        return route_for(service, registered, policy), None
    except InvalidValue as exc:
        return None, str(exc)


def without_conflicts(routes: Dict[str, Route], errors: Dict[str, str]) -> List[Route]:
    """Two services at one host name and path: the one with admitted instances keeps it (the
    gate refuses the other's instances), else the first by name; the other is left out (all of
    it: a route answers at all its names or at none)."""
    taken, out = {}, []
    for service in sorted(routes, key=lambda s: (routes[s].stable is None, s)):
        route = routes[service]
        keys = [(host, route.path) for host in route.hosts or ("",)]
        clash = next((k for k in keys if k in taken), None)
        if clash:
            where = f"{clash[0]}{route.path}" if clash[0] else f"path {route.path}"
            errors[service] = f"{where} is already routed to {taken[clash]}"
            continue
        taken.update((k, service) for k in keys)
        out.append(route)
    return sorted(out, key=lambda r: r.service)


def build_view(instances: InstanceStore, policies: PolicyStore) -> View:
    """One full read through the synchronous stores (`--once`)."""
    routes, errors = {}, {}
    for service, registered in sorted(instances.all().items()):
        try:
            _, policy = policies.get(service)
            route, error = _route(service, registered, policy)
        except InvalidValue as exc:
            route, error = None, str(exc)
        if error:
            errors[service] = error
            log.error("service %s left out of the proxy: %s", service, error)
        elif route:
            routes[service] = route
    return View(without_conflicts(routes, errors), errors)
