"""The one Swarm adapter: find a service's Swarm service, scale it, roll it back. Plain values
out; Docker's JSON stays here. It speaks to a manager node's engine (gatekeeper's own).

Swarm schedules the replicas; the stack decides which of them get traffic. The two meet in the
gate marker (catalog.model.GATE_MARKER): a service created with the stack's health command
(GATE_MIRROR_HEALTH_CMD) is healthy only once "open" is written into the task's container (by
the registrator of the task's host, gatekeeper.fleet.rollout), so Swarm's rolling update
(`--update-order start-first`) stops an old task only after the new one has passed its gate and
takes traffic.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import docker
import docker.errors
import requests

from catalog.errors import Refused, Unreachable
from catalog.images import split_image

log = logging.getLogger(__name__)

SCALE_LABEL = "gatekeeper.scale"        # a Swarm service label: min=1,max=10,rps=50,...


class SwarmError(Refused):
    """A Swarm request that cannot be carried out; the message says why and what to do."""


class SwarmUnavailable(Unreachable):
    """The engine did not answer a Swarm read: it is joining or leaving a swarm, or is down."""


@contextmanager
def _engine_answers(what: str) -> Iterator[None]:
    """Docker's errors in the adapter's words: 503 (the engine joining or leaving a swarm, its
    managers without a leader) and no answer at all are SwarmUnavailable, any other refusal a
    SwarmError with the engine's reason."""
    try:
        yield
    except docker.errors.APIError as exc:
        if exc.status_code == 503:
            raise SwarmUnavailable(f"the Docker Engine's Swarm is unavailable while {what} "
                                   f"({exc.explanation or exc}); try again in a moment") from None
        raise SwarmError(f"the Docker Engine refused {what}: {exc.explanation or exc}") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise SwarmUnavailable(f"the Docker Engine did not answer while {what} ({exc}); "
                               "try again in a moment") from None


@dataclass(frozen=True)
class SwarmService:
    id: str
    name: str                       # the Swarm service's own name
    version_index: int              # Swarm's object version: an update names it (check-and-set)
    replicas: Optional[int]         # None: a global service
    image: str                      # the spec's image, digest dropped
    labels: Dict[str, str] = field(default_factory=dict)      # the service's own labels
    update_state: str = ""          # "", updating, paused, completed, rollback_started, ...
    update_started: str = ""
    previous_image: str = ""
    registers_as: str = ""          # the Consul service its tasks register as (SERVICE_NAME or name)
    spec: dict = field(default_factory=dict, compare=False, repr=False)   # as read, for an update

    @property
    def updating(self) -> bool:
        return self.update_state == "updating"


def image_ref(ref: str) -> str:
    repo, tag = split_image(ref or "")
    return f"{repo}:{tag}" if tag else repo


def _container_spec(data: dict) -> dict:
    return ((data.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}


def service_from_inspect(data: dict) -> SwarmService:
    spec = data.get("Spec") or {}
    container = _container_spec(data)
    mode = spec.get("Mode") or {}
    status = data.get("UpdateStatus") or {}
    previous = ((data.get("PreviousSpec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    return SwarmService(
        id=data["ID"], name=spec.get("Name", ""), version_index=int((data.get("Version") or {}).get("Index", 0)),
        replicas=(mode.get("Replicated") or {}).get("Replicas") if "Replicated" in mode else None,
        image=image_ref(container.get("Image", "")), labels=dict(spec.get("Labels") or {}),
        update_state=status.get("State", ""), update_started=status.get("StartedAt", ""),
        previous_image=image_ref(previous.get("Image", "")),
        registers_as=(container.get("Labels") or {}).get("SERVICE_NAME") or spec.get("Name", ""), spec=spec)


class Swarm:
    """Narrow Swarm interface over the Engine API of a manager node."""

    def __init__(self, client: docker.DockerClient):
        self.client, self.api = client, client.api

    def active(self) -> bool:
        """This engine is a Swarm manager (a worker cannot read or change services)."""
        with _engine_answers("saying whether it is a Swarm manager"):
            info = self.api.info().get("Swarm") or {}
        return info.get("LocalNodeState") == "active" and bool(info.get("ControlAvailable"))

    def service(self, name: str) -> Optional[SwarmService]:
        """The Swarm service whose tasks register as `name`: named so, or labelled SERVICE_NAME=name."""
        if not self.active():
            return None
        with _engine_answers(f"listing Swarm services to find {name}'s"):
            found = [s for s in self.api.services() if (_container_spec(s).get("Labels") or {}).get("SERVICE_NAME") == name]
            found = found or [s for s in self.api.services(filters={"name": name}) if s["Spec"]["Name"] == name]
        return service_from_inspect(found[0]) if found else None

    def scaled_services(self) -> List[SwarmService]:
        """Replicated services that carry a gatekeeper.scale label."""
        if not self.active():
            return []
        with _engine_answers("listing Swarm services"):
            found = self.api.services(filters={"label": SCALE_LABEL})
        return [svc for svc in map(service_from_inspect, found) if svc.replicas is not None]

    def running_tasks(self, svc: SwarmService) -> int:
        with _engine_answers(f"listing Swarm service {svc.name}'s tasks"):
            tasks = self.api.tasks(filters={"service": svc.id, "desired-state": "running"})
        return sum(1 for t in tasks if (t.get("Status") or {}).get("State") == "running")

    def scale(self, svc: SwarmService, replicas: int) -> None:
        """Set the replica count, only if the service is still at `svc.version_index`. The spec
        goes back exactly as read, but for the count (`docker service scale`): the SDK's
        update_service rewrites the task template, which makes Swarm replace every task."""
        spec = dict(svc.spec, Mode={"Replicated": {"Replicas": replicas}})
        self._update(svc, spec, what="scaling it")

    def roll_back(self, svc: SwarmService) -> None:
        """Swarm's own rollback (`docker service rollback`): back to the previous spec."""
        self._update(svc, svc.spec, what="rolling it back", rollback="previous")

    def _update(self, svc: SwarmService, spec: dict, what: str, **params) -> None:
        with _engine_answers(f"{what} (Swarm service {svc.name})"):
            response = self.api._post_json(self.api._url("/services/{0}/update", svc.id), data=spec,
                                           params={"version": svc.version_index, **params})
        try:
            self.api._raise_for_status(response)
        except docker.errors.APIError as exc:
            if "out of sequence" in str(exc):
                raise SwarmError(f"Swarm service {svc.name} changed while {what}; try again") from None
            raise SwarmError(f"Swarm service {svc.name}: the Docker Engine refused {what}: "
                             f"{exc.explanation or exc}") from None
