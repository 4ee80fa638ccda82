"""Keeps the registry in step with Docker: add on start, remove on stop, full sync on demand.

It writes the instances of this host's containers (catalog.stores.InstanceStore) and the
records of the containers it refused (catalog.stores.RejectionStore); unit tests give it
in-memory ones (tests/support/fakes.py).

A rejection record stays while its container exists (the operator needs the reason), is removed
as soon as a container of that name registers (fixed), and `forget_after` seconds after the
container is gone. Each registrator removes only the records it wrote. A skipped container
(SERVICE_IGNORE, or --explicit without SERVICE_NAME) is logged once, with the reason.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Dict, List, Protocol

from catalog.model import Instance, Rejection
from catalog.stores import InstanceStore, RejectionStore

from . import metrics
from .docker_source import Container
from .translate import Rejected, Settings, Skipped, instances_for

log = logging.getLogger(__name__)


class Docker(Protocol):
    def inspect(self, container_id: str): ...
    def running_ids(self) -> List[str]: ...


def same_registration(a: Instance, b: Instance) -> bool:
    """Equal as Consul stores them (the health check definition is not read back)."""
    return replace(a, health_check=None) == replace(b, health_check=None)


class Bridge:
    def __init__(self, instances: InstanceStore, rejections: RejectionStore, docker: Docker, settings: Settings,
                 forget_after: float = 600.0, clock=time.monotonic):
        self.instances, self.rejections = instances, rejections
        self.docker, self.settings = docker, settings
        self.forget_after, self.clock = forget_after, clock
        self.known: Dict[str, Instance] = {}       # instance id -> what we registered
        self.health: Dict[str, str] = {}           # container id -> Docker health last mirrored
        self.rejected: Dict[str, Rejection] = {}   # container name -> the record we wrote
        self.gone_since: Dict[str, float] = {}     # container name -> when its container went away
        self.skipped: Dict[str, str] = {}          # container id -> reason already logged

    def add(self, container_id: str) -> None:
        container = self.docker.inspect(container_id)
        if container is None or not container.running:
            self.remove(container_id)
            return
        for inst in self._wanted(container):
            self._ensure(inst)
        if container.health is not None:
            self.health_changed(container_id, container.health)

    def health_changed(self, container_id: str, status: str) -> None:
        """Docker's health_status: only a healthy container's instances can be admitted."""
        instances = [i for i in self.known.values() if i.container_id == container_id and i.docker_health]
        if not instances or self.health.get(container_id) == status:
            return
        for inst in instances:
            self.instances.set_docker_health(inst, status)
        self.health[container_id] = status
        log.info("container %s is %s: %s", instances[0].container_name, status,
                 "may be admitted" if status == "healthy" else "out of traffic")

    def remove(self, container_id: str, why: str = "stopped") -> None:
        for iid in [i for i, inst in self.known.items() if inst.container_id == container_id]:
            self.instances.deregister(iid)
            inst = self.known.pop(iid)
            metrics.DEREGISTRATIONS.labels(why).inc()
            log.info("deregistered %s (container %s %s)", iid, inst.container_name, why)
        self.health.pop(container_id, None)
        self.skipped.pop(container_id, None)
        for name, rej in self.rejected.items():
            if rej.container_id == container_id:
                self.gone_since.setdefault(name, self.clock())

    def sync(self, again: bool = False) -> None:
        """Make the registry match the running containers: add missing, drop stale, keep equal;
        `again`: register every instance again (with registrator's token now; each gate keeps its status),
        as after a new token: the agent syncs an instance to the catalog with the token it was
        registered with, and a revoked one would keep it out for good."""
        started = time.monotonic()
        existing = self.instances.local(self.settings.registered_by)
        if again:
            self._remove_left_in_catalog(existing)
        self.rejected = {name: rej for name, rej in self.rejections.all().items()
                         if rej.registered_by == self.settings.registered_by}
        wanted: Dict[str, Instance] = {}
        health: Dict[str, str] = {}
        running = set()
        for cid in self.docker.running_ids():
            container = self.docker.inspect(cid)
            if container is not None:
                running.add(cid)
                for inst in self._wanted(container):
                    wanted[inst.id] = inst
                if container.health is not None:
                    health[cid] = container.health
        self.known = dict(existing)
        for iid in sorted(set(existing) - set(wanted)):
            self.instances.deregister(iid)
            self.known.pop(iid, None)
            metrics.DEREGISTRATIONS.labels("gone").inc()
            log.info("deregistered %s (its container is gone)", iid)
        if again:
            self.known = {}
        for inst in wanted.values():
            self._ensure(inst)
        self.health = {cid: h for cid, h in self.health.items() if cid in health}
        for cid, status in health.items():
            self.health_changed(cid, status)
        self.skipped = {cid: why for cid, why in self.skipped.items() if cid in running}
        self._forget_gone_rejections(running)
        metrics.RESYNC_SECONDS.observe(time.monotonic() - started)
        log.info("sync: %d instance(s) registered, %d stale removed in %.2f s", len(wanted),
                 len(set(existing) - set(wanted)), time.monotonic() - started)

    def _wanted(self, container: Container) -> List[Instance]:
        try:
            wanted = instances_for(container, self.settings)
        except Skipped as exc:
            if self.skipped.get(container.id) != exc.reason:
                log.info("%s", exc)
                self.skipped[container.id] = exc.reason
            return []
        except Rejected as exc:
            rejection = Rejection(container.name, container.id, str(exc), exc.service,
                                  self.settings.registered_by, time.time())
            if not rejection.same_as(self.rejected.get(container.name)):
                log.error("%s", exc)
                metrics.REJECTIONS.inc()
                self.rejections.put(rejection)
                self.rejected[container.name] = rejection
            self.gone_since.pop(container.name, None)
            return []
        if wanted and container.name in self.rejected:
            self.rejections.forget(container.name)
            del self.rejected[container.name]
            self.gone_since.pop(container.name, None)
            log.info("container %s is registered now; its rejection record is removed", container.name)
        return wanted

    def _forget_gone_rejections(self, running: set) -> None:
        now = self.clock()
        for name, rej in self.rejected.items():
            if rej.container_id in running:
                self.gone_since.pop(name, None)
            else:
                self.gone_since.setdefault(name, now)
        self.tick()

    def tick(self) -> None:
        """Between syncs: forget the rejections of containers gone longer than `forget_after`
        (known gone from a stop event or the last sync; no Docker call)."""
        now = self.clock()
        for name, since in list(self.gone_since.items()):
            if name not in self.rejected:
                del self.gone_since[name]
            elif now - since >= self.forget_after:
                self.rejections.forget(name)
                del self.rejected[name]
                self.gone_since.pop(name, None)
                log.info("forgot the rejection of container %s: gone for %.0f s", name, now - since)

    def _remove_left_in_catalog(self, existing: Dict[str, Instance]) -> None:
        """Instances the agent dropped while Consul refused their token, still in the catalog (the
        agent would go on trying to remove them with the token they were registered with, for
        good): given the token in use now, then removed with it."""
        for iid, inst in sorted(self.instances.in_catalog(self.settings.registered_by).items()):
            if iid not in existing:
                self.instances.register(inst)
                self.instances.deregister(iid)
                metrics.DEREGISTRATIONS.labels("gone").inc()
                log.info("deregistered %s (gone from this agent, left in the catalog while Consul refused the token)", iid)

    def _ensure(self, inst: Instance) -> None:
        """Register unless an equal registration exists: no needless re-registration, no flap."""
        current = self.known.get(inst.id)
        if current is not None and same_registration(current, inst):
            return
        self.instances.register(inst)
        self.known[inst.id] = inst
        metrics.REGISTRATIONS.inc()
        log.info("registered %s as %s %s at %s:%d", inst.id, inst.service, inst.version,
                 inst.address, inst.port)
