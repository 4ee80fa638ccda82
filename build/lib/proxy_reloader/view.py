"""What to route, read from Consul: every service's instances and routing policy -> Routes.

Values are re-checked against the allow-list here, because anyone with write access to Consul
could have written them: an invalid service is left out (and reported), the others go on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List

from catalog import validation as v
from catalog.routing import Route, route_for
from catalog.validation import InvalidValue

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
        v.check("proxy_host", inst.proxy_host)


def build_view(store) -> View:
    routes, errors, paths = [], {}, {}
    for service, registered in sorted(store.all_instances().items()):
        try:
            for ri in registered:
                _check_instance(ri.instance)
            _, policy = store.policy(service)
            route = route_for(service, registered, policy)
        except InvalidValue as exc:
            errors[service] = str(exc)
            log.error("service %s left out of the proxy: %s", service, exc)
            continue
        key = (route.host, route.path)
        if key in paths:
            errors[service] = f"path {route.path} is already routed to {paths[key]}"
            log.error("service %s left out of the proxy: %s", service, errors[service])
            continue
        paths[key] = service
        routes.append(route)
    return View(routes, errors)
