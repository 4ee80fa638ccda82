"""The autoscaler: every few seconds, while this gatekeeper leads, each Swarm service with a
gatekeeper.scale label gets the replica count `scaling` decides, from its admitted
instances in Consul and its traffic in Prometheus. Every change goes into the service's history
with the figures that caused it; the last one is kept in KV so a new leader honours the cooldown.

`scale_by_hand` is `gatekeeper scale SERVICE N`: the same bounds, Swarm's check-and-set.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from catalog.errors import Refused
from catalog.model import RegisteredInstance, Scaling
from catalog.retry import TRANSIENT
from catalog.stores import Stores
from catalog.validation import InvalidValue, check, parse_scale_label

from .. import metrics
from .scaling import Load, ScaleDecision, decide
from .swarm import SCALE_LABEL, Swarm, SwarmError, SwarmService, SwarmUnavailable

log = logging.getLogger(__name__)


def settings_of(svc: SwarmService) -> Scaling:
    """The service's gatekeeper.scale label, checked (no label: the defaults, by hand only)."""
    label = svc.labels.get(SCALE_LABEL, "")
    return parse_scale_label(label) if label else Scaling(min=0, max=1000)


def admitted_tasks(registered: List[RegisteredInstance], swarm_service: str) -> int:
    return sum(1 for ri in registered if ri.admitted and ri.instance.swarm_service == swarm_service)


def record_change(stores: Stores, service: str, replicas: int, previous: int, reason: str, by: str,
                  now: Optional[float] = None, **figures) -> None:
    """Keep the change as the service's scaling record and in its history."""
    stores.scaling.put(service, {"time": time.time() if now is None else now, "replicas": replicas, "previous": previous,
                                 "reason": reason, "by": by})
    stores.history.add(service, "scaled", replicas=replicas, previous=previous, reason=reason, by=by, **figures)
    metrics.SCALINGS.labels(service, "out" if replicas > previous else "in").inc()


def scale_by_hand(stores: Stores, swarm: Swarm, service: str, replicas: int) -> Tuple[SwarmService, str]:
    """`gatekeeper scale SERVICE N`: refused outside the label's min..max, for a service that is
    not a Swarm service, or when Swarm mode is off; nothing changes then."""
    check("service", service)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise InvalidValue("replicas", replicas, "a whole number of replicas, 0 or more")
    if not swarm.active():
        raise SwarmError("this Docker Engine is not a Swarm manager; replicas exist only for Swarm services "
                         "(`scripts/stack.sh swarm` turns swarm mode on; docs/guides/swarm.md)")
    svc = swarm.service(service)
    if svc is None:
        known = "" if not stores.instances.of(service) else " (its instances are plain containers: start more with docker run)"
        raise SwarmError(f"no Swarm service runs {service!r}{known}; create one with `docker service create` "
                         "(docs/guides/swarm.md)")
    if svc.replicas is None:
        raise SwarmError(f"Swarm service {svc.name} is global (one task per node); it has no replica count")
    try:
        s = settings_of(svc)
    except InvalidValue as exc:
        raise SwarmError(f"Swarm service {svc.name}'s {SCALE_LABEL} label is invalid: {exc}; fix it with "
                         f"`docker service update --label-add {SCALE_LABEL}=min=1,max=5 {svc.name}`") from None
    if not s.min <= replicas <= s.max:
        raise SwarmError(f"{replicas} replicas is outside {service}'s bounds {s.min}..{s.max} (label {SCALE_LABEL} "
                         f"on Swarm service {svc.name}); choose a number in range or change the label")
    if replicas == svc.replicas:
        return svc, f"{service}: already {replicas} replica(s); nothing changed"
    swarm.scale(svc, replicas)
    record_change(stores, service, replicas, svc.replicas, "set by hand", "operator")
    note = " (the autoscaler may change it again as load changes)" if s.automatic else ""
    return svc, (f"{service}: {svc.replicas} -> {replicas} replica(s); each new task is tested before it takes "
                 f"traffic, each removed one leaves every proxy before it stops{note}")


class Autoscaler:
    def __init__(self, stores: Stores, swarm: Swarm, load: Callable[[str, float], Load],
                 is_leader: Callable[[], bool], interval: float = 2.0, clock: Callable[[], float] = time.time):
        self.stores, self.swarm, self.load = stores, swarm, load
        self.is_leader, self.interval, self.clock = is_leader, interval, clock
        self.last: Dict[str, str] = {}          # service -> last decision's reason (logged on change)
        self.bad_label: Dict[str, str] = {}

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.interval):
            if not self.is_leader():
                continue
            try:
                self.tick()
            except TRANSIENT + (SwarmUnavailable,) as exc:
                log.warning("autoscaler: Consul or Docker unreachable, will retry: %s", exc)
            except Exception:
                log.exception("autoscaler: tick failed")

    def start(self, stopping: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stopping,), name="autoscaler", daemon=True)
        t.start()
        return t

    def tick(self) -> None:
        for svc in self.swarm.scaled_services():
            self.scale(svc)

    def scale(self, svc: SwarmService) -> Optional[ScaleDecision]:
        service = svc.registers_as
        try:
            s = settings_of(svc)
        except InvalidValue as exc:
            if self.bad_label.get(service) != str(exc):
                log.error("%s: ignoring the %s label of Swarm service %s: %s", service, SCALE_LABEL, svc.name, exc)
                self.bad_label[service] = str(exc)
            return None
        self.bad_label.pop(service, None)
        admitted = admitted_tasks(self.stores.instances.of(service), svc.name)
        load = self.load(service, s.window) if s.automatic else Load(None)
        last = self.stores.scaling.get(service)
        since = self.clock() - last["time"] if last and "time" in last else float("inf")
        d = decide(s, svc.replicas, admitted, load, since)
        if self.last.get(service) != d.reason:
            log.info("%s: %s", service, d.reason)
            self.last[service] = d.reason
        if not d.changes(svc.replicas):
            return d
        try:
            self.swarm.scale(svc, d.replicas)
        except (Refused, InvalidValue) as exc:
            log.warning("%s: could not scale: %s", service, exc)
            return d
        log.info("%s: scaled %d -> %d: %s", service, svc.replicas, d.replicas, d.reason)
        figures = {k: v for k, v in (("rate", load.rate), ("p99_ms", load.p99_ms)) if v is not None}
        record_change(self.stores, service, d.replicas, svc.replicas, d.reason, "gatekeeper (autoscaler)",
                      now=self.clock(), admitted=admitted, **figures)
        return d
