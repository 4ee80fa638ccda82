"""The Docker side of registrator: container details and the event stream, as plain values."""
from __future__ import annotations

import io
import logging
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import docker
import docker.errors
import requests

from catalog.engine import engine_client
from catalog.model import GATE_MARKER

log = logging.getLogger(__name__)

SWARM_SERVICE_LABEL = "com.docker.swarm.service.name"   # set by Swarm on every task's container
SWARM_TASK_LABEL = "com.docker.swarm.task.id"


@dataclass(frozen=True)
class PublishedPort:
    container_port: int
    protocol: str
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    running: bool
    labels: Dict[str, str] = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)
    ports: Tuple[PublishedPort, ...] = ()
    exposed: Tuple[int, ...] = ()          # container ports (tcp) the image exposes
    internal_ip: str = ""
    health: Optional[str] = None           # None: no HEALTHCHECK; else starting|healthy|unhealthy
    gate_mirror: bool = False              # the HEALTHCHECK reads the gate marker, not the app
    swarm_service: str = ""                # a Swarm task's container: its service and task
    swarm_task: str = ""
    started_at: str = ""                   # State.StartedAt: each run of the container has its own
    restart_policy: str = ""               # HostConfig.RestartPolicy.Name ("" or "no": none)


@dataclass(frozen=True)
class ContainerEvent:
    action: str            # start, die, stop, kill, destroy, health_status, ...
    container_id: str
    attributes: Dict[str, str] = field(default_factory=dict)
    detail: str = ""       # after the colon: "healthy" in "health_status: healthy"


def container_from_inspect(data: dict) -> Container:
    cfg = data.get("Config") or {}
    env = {}
    for item in cfg.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    ports = []
    for spec, bindings in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
        cport, _, proto = spec.partition("/")
        for b in bindings or []:
            if ":" in (b.get("HostIp") or ""):       # the IPv6 twin of an IPv4 binding
                continue
            ports.append(PublishedPort(int(cport), proto or "tcp", b.get("HostIp") or "", int(b["HostPort"])))
            break
    state = data.get("State") or {}
    net = data.get("NetworkSettings") or {}
    internal_ip = net.get("IPAddress") or next(
        (n.get("IPAddress") for n in (net.get("Networks") or {}).values() if n.get("IPAddress")), "")
    exposed = sorted(int(spec.partition("/")[0]) for spec in (cfg.get("ExposedPorts") or {})
                     if spec.endswith("/tcp") or "/" not in spec)
    test = (cfg.get("Healthcheck") or {}).get("Test") or []
    health = None
    gate_mirror = any(GATE_MARKER in part for part in test)
    if test and test[0] != "NONE" and not gate_mirror:
        health = (state.get("Health") or {}).get("Status") or "starting"
    labels = dict(cfg.get("Labels") or {})
    return Container(
        id=data["Id"], name=data["Name"].lstrip("/"), image=cfg.get("Image", ""),
        running=bool(state.get("Running")),
        labels=labels, env=env,
        ports=tuple(sorted(ports, key=lambda p: (p.container_port, p.protocol))),
        exposed=tuple(exposed), internal_ip=internal_ip, health=health, gate_mirror=gate_mirror,
        swarm_service=labels.get(SWARM_SERVICE_LABEL, ""), swarm_task=labels.get(SWARM_TASK_LABEL, ""),
        started_at=state.get("StartedAt") or "",
        restart_policy=((data.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "",
    )


def _marker_tar(state: str) -> bytes:
    """GATE_MARKER's file holding `state`, as the tar archive the Engine's put_archive takes."""
    body = (state + "\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(GATE_MARKER.rsplit("/", 1)[1])
        info.size, info.mode, info.mtime = len(body), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


class DockerSource:
    """Narrow Docker interface: inspect, running containers, events."""

    def __init__(self, base_url: Optional[str] = None, timeout: float = 10.0, attempts: Optional[int] = None):
        """Waits for an engine that does not answer yet (`attempts`: at most so many tries);
        ValueError for an address no engine can have."""
        self.client = engine_client(base_url, timeout, attempts, what="the Docker Engine (registrator)")
        self.api = self.client.api

    def ping(self) -> bool:
        return self.api.ping()

    def inspect(self, container_id: str) -> Optional[Container]:
        """The container, or None when it is already gone (a --rm container, say)."""
        try:
            return container_from_inspect(self.api.inspect_container(container_id))
        except docker.errors.NotFound:
            return None

    def write_marker(self, container_id: str, started: str, state: str) -> str:
        """Write "open" or "closed" into the gate marker of a container, only while the run
        `started` is the one running. What happened, in a few words."""
        current = self.inspect(container_id)
        if current is None:
            return "gone already"
        if not current.running or current.started_at != started:
            return "not running that run any more"
        try:
            self.api.put_archive(container_id, GATE_MARKER.rsplit("/", 1)[0] or "/", _marker_tar(state))
        except docker.errors.NotFound:
            return "gone already"
        return f"marker {state}"

    def carry_out(self, action: str, container_id: str, started: str, timeout: int = 10) -> str:
        """Stop, restart or kill a container, only while the run `started` is the one running;
        start one only while it is still stopped after the run `started` (a drained container
        brought back for a rollback); remove one only while its last run is `started` (drained
        too many versions ago: stopped first if that drain's stop is still under way). What
        happened, in a few words."""
        current = self.inspect(container_id)
        if current is None:
            return "gone already"
        if action in ("start", "remove"):
            return self._on_stopped(action, current, container_id, started, timeout)
        if not current.running or current.started_at != started:
            return "not running that run any more"
        try:
            if action == "stop":
                self.api.stop(container_id, timeout=timeout)
            elif action == "restart":
                self.api.restart(container_id, timeout=timeout)
            elif action == "kill":
                self.api.kill(container_id)
            else:
                raise ValueError(f"unknown container action {action!r}")
        except docker.errors.NotFound:
            return "gone already"
        except docker.errors.APIError as exc:
            if "is not running" in str(exc):
                return "not running that run any more"
            raise
        return {"stop": "stopped", "restart": "restarted", "kill": "killed"}[action]

    def _on_stopped(self, action: str, current: Container, container_id: str, started: str,
                    timeout: int) -> str:
        if current.started_at != started:
            return ("running another run since that one" if current.running else
                    "started and stopped again since that run") + f"; not {'removed' if action == 'remove' else 'started'}"
        try:
            if action == "start":
                if current.running:
                    return "running already"
                self.api.start(container_id)
                return "started"
            if current.running:            # the drained run, its stop still under way: a remove implies it
                self.api.stop(container_id, timeout=timeout)
            self.api.remove_container(container_id)
        except docker.errors.NotFound:
            return "gone already"
        return "removed"

    def running_ids(self) -> List[str]:
        return [c["Id"] for c in self.api.containers(quiet=True)]

    def stream_events(self, on_event: Callable[[ContainerEvent], None], ready: threading.Event,
                      stop: threading.Event) -> None:
        """Deliver container events until the stream ends; `ready` is set once subscribed."""
        stream = self.api.events(decode=True, filters={"type": "container"})
        ready.set()
        try:
            for ev in stream:
                if stop.is_set():
                    break
                actor = ev.get("Actor") or {}
                action, _, detail = (ev.get("Action") or ev.get("status") or "").partition(":")
                on_event(ContainerEvent(action.strip(), actor.get("ID") or ev.get("id", ""),
                                        dict(actor.get("Attributes") or {}), detail.strip()))
        finally:
            stream.close()


DOCKER_ERRORS = (docker.errors.APIError, requests.ConnectionError, requests.Timeout,
                 ConnectionError)
