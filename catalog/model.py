"""Plain values exchanged between registrator, gatekeeper and proxy_reloader.

Raw Docker and Consul JSON never leave their adapters; these dataclasses do.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import List, Mapping, Optional, Tuple

GATE_SUFFIX = ":gate"
HEALTH_SUFFIX = ":health"

# Service metadata keys written by registrator (Consul meta keys: [A-Za-z0-9_-]).
META_CONTAINER_ID = "container_id"
META_CONTAINER_NAME = "container_name"
META_IMAGE = "image"
META_VERSION = "version"
META_TESTS_IMAGE = "tests_image"
META_PROXY_PATH = "proxy_path"
META_PROXY_HOST = "proxy_host"
META_PROXY_STRIP = "proxy_strip_prefix"
META_REGISTERED_BY = "registered_by"
META_DOCKER_HEALTH = "docker_health"
META_MODE = "promotion_mode"             # the gatekeeper.mode label: how the service is promoted
META_ANALYSIS = "analysis"               # the gatekeeper.analysis label: progressive settings, k=v,...
META_SWARM_SERVICE = "swarm_service"     # the Swarm service a task container belongs to
META_SWARM_TASK = "swarm_task"           # the Swarm task id (each replacement is a new task)
META_CONTAINER_STARTED = "container_started"   # Docker's State.StartedAt of the registered run
META_GATE_MIRROR = "gate_mirror"         # the container's HEALTHCHECK reads GATE_MARKER
META_RESTART_POLICY = "restart_policy"   # the container's restart policy (always, unless-stopped, ...)
META_ROUTE_SETTING = "proxy_"            # + a route setting's name: proxy.timeout=5s is meta proxy_timeout=5s
DOCKER_HEALTH_SUFFIX = ":docker-health"

# The file gatekeeper writes into a container whose HEALTHCHECK mirrors the gate: "open" once
# the instance passed its gate and its version takes traffic, "closed" otherwise. Swarm waits for a
# healthy task before it stops the one it replaces, so a rolling update waits for the gate.
GATE_MARKER = "/tmp/proxystack-gate"
GATE_MIRROR_HEALTH_CMD = f"grep -qx open {GATE_MARKER}"


@dataclass(frozen=True)
class Instance:
    """One published port of one container, as registered in Consul."""

    id: str                      # <docker-host>:<container-name>:<port>
    service: str
    address: str
    port: int
    version: str
    container_id: str
    container_name: str
    image: str
    registered_by: str           # registrator identity, so it only ever removes its own
    tests_image: str = ""
    proxy_path: str = ""
    proxy_host: str = ""             # comma-separated names, canonical (catalog.route_settings.parse_hosts)
    route_settings: Tuple[Tuple[str, str], ...] = ()   # proxy.timeout=5s and the like, canonical
    tags: Tuple[str, ...] = ()
    extra_meta: Tuple[Tuple[str, str], ...] = ()
    health_check: Optional["HealthCheck"] = None
    docker_health: bool = False      # the container has a Docker HEALTHCHECK
    strip_prefix: bool = False       # the proxy removes proxy_path before forwarding
    mode: str = ""                   # gatekeeper.mode label: the service's promotion mode from now on
    analysis: str = ""               # gatekeeper.analysis label: "step=10,interval=5", validated
    swarm_service: str = ""          # the container is a task of this Swarm service
    swarm_task: str = ""             # ... this task
    gate_mirror: bool = False        # its HEALTHCHECK reads GATE_MARKER (written by gatekeeper)
    started: str = ""                # when this run of the container started (a restart is a new run)
    restart_policy: str = ""         # Docker's restart policy of the container ("" when it has none)
    node: str = field(default="", compare=False)   # the Consul node (host) it is registered on, when read from the catalog

    @property
    def gate_check_id(self) -> str:
        return self.id + GATE_SUFFIX

    @property
    def health_check_id(self) -> str:
        return self.id + HEALTH_SUFFIX

    @property
    def docker_health_check_id(self) -> str:
        return self.id + DOCKER_HEALTH_SUFFIX

    @property
    def path(self) -> str:
        return self.proxy_path or f"/{self.service}/"

    def meta(self) -> dict:
        meta = dict(self.extra_meta)
        meta.update({
            META_CONTAINER_ID: self.container_id,
            META_CONTAINER_NAME: self.container_name,
            META_IMAGE: self.image,
            META_VERSION: self.version,
            META_TESTS_IMAGE: self.tests_image,
            META_PROXY_PATH: self.path,
            META_PROXY_HOST: self.proxy_host,
            META_REGISTERED_BY: self.registered_by,
        })
        meta.update((META_ROUTE_SETTING + k, value) for k, value in self.route_settings)
        if self.docker_health:
            meta[META_DOCKER_HEALTH] = "1"
        if self.strip_prefix:
            meta[META_PROXY_STRIP] = "1"
        if self.mode:
            meta[META_MODE] = self.mode
        if self.analysis:
            meta[META_ANALYSIS] = self.analysis
        if self.swarm_service:
            meta[META_SWARM_SERVICE] = self.swarm_service
            meta[META_SWARM_TASK] = self.swarm_task
        if self.gate_mirror:
            meta[META_GATE_MIRROR] = "1"
        if self.started:
            meta[META_CONTAINER_STARTED] = self.started
        if self.restart_policy:
            meta[META_RESTART_POLICY] = self.restart_policy
        return meta

    @property
    def udp(self) -> bool:
        """Registered for a UDP port (registrator's mark): nginx proxies HTTP, so never routed."""
        return UDP in self.tags

    def all_tags(self) -> list:
        return sorted(set(self.tags) | {f"version={self.version}"})


class ForOneRun:
    """What gatekeeper decided for one run of one container (its `container_id` and `started`),
    kept in KV as JSON for that container's own host to apply."""

    def applies_to(self, inst: "Instance") -> bool:
        return self.container_id == inst.container_id and self.started == inst.started

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class GateRecord(ForOneRun):
    """The gate gatekeeper decided for one run of one container, kept in KV under the instance's
    node. That node's registrator applies it to the gate check: a TTL check can only be set
    through the agent the instance is registered with, and only its own host reaches that agent."""

    passing: bool
    output: str
    container_id: str
    started: str = ""
    written: float = 0.0         # when gatekeeper wrote it: a rewrite of the same gate is a new value
                                 # (Consul keeps the index of an unchanged one, and would not wake anyone)

    @classmethod
    def from_json(cls, raw: str) -> "GateRecord":
        d = json.loads(raw)
        return cls(bool(d["passing"]), str(d.get("output", "")), str(d["container_id"]), str(d.get("started", "")),
                   float(d.get("written", 0.0)))


MARKER_STATES = ("open", "closed")


@dataclass(frozen=True)
class MarkerRecord(ForOneRun):
    """The gate marker gatekeeper decided for one run of a Swarm task's container: "open" once
    it passed its gate and its version takes traffic, "closed" otherwise. Kept in KV under the
    task's node; that node's registrator writes it into the container (GATE_MARKER), where the
    task's health command, and so Swarm's rolling update, reads it. Only its own host's engine
    reaches the container."""

    state: str                   # one of MARKER_STATES
    container_id: str
    started: str = ""
    written: float = 0.0

    @classmethod
    def from_json(cls, raw: str) -> "MarkerRecord":
        d = json.loads(raw)
        state = str(d["state"])
        if state not in MARKER_STATES:
            raise ValueError(f"unknown gate marker state {state!r}")
        return cls(state, str(d["container_id"]), str(d.get("started", "")), float(d.get("written", 0.0)))


CONTAINER_ACTIONS = ("stop", "start", "remove", "restart", "kill")
UDP = "udp"      # the tag of an instance registered for a published UDP port: in the catalog, never proxied


@dataclass(frozen=True)
class ContainerAction:
    """Something gatekeeper wants done to one run of one container (stop it after a drain,
    start a drained one again for a rollback, remove one drained too many versions ago, restart
    it to heal it, kill a Swarm task so Swarm replaces it), kept in KV under the instance's node.
    That node's registrator carries it out on its own engine, once, and only to the run the
    record names: a stop, restart or kill while that run is the one running, a start while the
    container is still stopped after that run, a remove while that run is its last (stopped
    first if its stop is still under way). A restarted or replaced container is never acted on
    by a record made for its earlier run."""

    action: str                  # one of CONTAINER_ACTIONS
    container_id: str
    started: str
    reason: str = ""
    timeout: int = 10            # seconds between SIGTERM and SIGKILL (stop, restart)
    written: float = 0.0         # when gatekeeper wrote it: the same action asked again is a new one

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "ContainerAction":
        d = json.loads(raw)
        action = str(d["action"])
        if action not in CONTAINER_ACTIONS:
            raise ValueError(f"unknown container action {action!r}")
        return cls(action, str(d["container_id"]), str(d.get("started", "")), str(d.get("reason", "")),
                   int(d.get("timeout", 10)), float(d.get("written", 0.0)))


def containers_in_words(containers) -> str:
    """Drained or started containers as people read them: "web-a on h1, web-b on h2"."""
    return ", ".join(f"{c.get('name', '?')} on {c.get('node') or '?'}" for c in containers if isinstance(c, dict))


@dataclass(frozen=True)
class RollbackRequest:
    """`gatekeeper rollback` to a version whose containers the drain stopped: the leading
    gatekeeper asks each container's registrator to start it (`containers`, as the drain's
    history event names them), and once one of them has passed its tests again the version is
    stable again. Kept in KV per service until then, or until `deadline`."""

    version: str                 # the version to bring back
    replacing: str               # the stable version when the rollback was asked
    containers: Tuple[dict, ...]  # {"name", "node", "id", "started", "instance"} per drained container
    by: str = "operator"
    asked: float = 0.0           # when the operator asked
    deadline: float = 0.0        # when an unfinished rollback is given up
    started: bool = False        # the start actions have been written

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "containers": list(self.containers)}, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "RollbackRequest":
        d = json.loads(raw)
        containers = tuple(c for c in d.get("containers", ()) if isinstance(c, dict) and c.get("name"))
        return cls(str(d["version"]), str(d.get("replacing", "")), containers, str(d.get("by", "operator")),
                   float(d.get("asked", 0.0)), float(d.get("deadline", 0.0)), bool(d.get("started", False)))


@dataclass(frozen=True)
class ProxyState:
    """A proxy that announces itself in Consul (proxy-reloader --report-check). `alive` is its
    heartbeat check: a proxy that has not said so within the check's TTL (killed, its host
    gone) is not alive, and nobody waits for it to serve anything."""
    id: str
    alive: bool = True
    note: str = ""                   # the heartbeat check's output when not alive


@dataclass(frozen=True)
class HealthCheck:
    """SERVICE_CHECK_HTTP (target: a path) or SERVICE_CHECK_TCP (target: empty)."""
    kind: str                 # "http" | "tcp"
    target: str = ""
    interval: str = "5s"
    timeout: str = "2s"


@dataclass(frozen=True)
class RegisteredInstance:
    """An instance as Consul reports it, with the state of its checks."""

    instance: Instance
    checks: Mapping[str, str] = field(default_factory=dict)   # check id -> status
    gate_output: str = ""

    @property
    def admitted(self) -> bool:
        """Traffic only to an instance whose gate exists and whose every check passes."""
        return (self.instance.gate_check_id in self.checks
                and all(s == "passing" for s in self.checks.values()))

    @property
    def gate_status(self) -> str:
        return self.checks.get(self.instance.gate_check_id, "missing")


@dataclass(frozen=True)
class Rejection:
    """Why a container was not registered, kept in Consul KV for `gatekeeper status` and `why`."""

    container_name: str
    container_id: str
    reason: str
    service: str = ""            # the service it asked to be, when that name itself is valid
    registered_by: str = ""      # the registrator that refused it (and alone removes the record)
    time: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "Rejection":
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def same_as(self, other: Optional["Rejection"]) -> bool:
        return other is not None and (self.container_id, self.reason) == (other.container_id, other.reason)


# Verdict states: pending -> testing -> passed | failed | error
PASSED, FAILED, ERROR, TESTING = "passed", "failed", "error", "testing"
ROUTE_TAKEN = "route taken: "     # an error verdict's summary: another service serves the instance's route
OTHER_OWNER = "other owner: "     # ... the service is run by Swarm and this is a plain container, or the reverse


@dataclass(frozen=True)
class Verdict:
    instance_id: str
    container_id: str
    tests_image: str
    state: str
    summary: str
    started: float = 0.0
    finished: float = 0.0
    log_tail: str = ""
    container_started: str = ""      # when the tested process started (Docker's State.StartedAt)
    # a first pass whose promotion (the routing policy's change) is still to be made: set with
    # the verdict, cleared once made, so that a promotion a fault cut short is made later
    promotion_pending: bool = False

    @property
    def duration(self) -> float:
        return max(0.0, self.finished - self.started) if self.finished else 0.0

    @property
    def final(self) -> bool:
        return self.state in (PASSED, FAILED, ERROR)

    @property
    def lacked_test_image(self) -> bool:
        """An error because no test image was named: a default image set later retests it."""
        return self.state == ERROR and not self.tests_image

    @property
    def route_taken(self) -> bool:
        """An error because another service serves the same host and path: tested again once
        that route is free."""
        return self.state == ERROR and self.summary.startswith(ROUTE_TAKEN)

    @property
    def other_owner(self) -> bool:
        """An error because the service is run the other way (by a Swarm service, and this is a
        plain container, or the reverse): tested again once the other way serves nothing."""
        return self.state == ERROR and self.summary.startswith(OTHER_OWNER)

    def applies_to(self, instance: Instance) -> bool:
        """A verdict belongs to one run of one container: a new container with the same name, or
        the same container restarted (by its restart policy, by hand, or to heal it), is retested."""
        return self.container_id == instance.container_id and (
            not self.container_started or not instance.started or self.container_started == instance.started)

    def to_json(self) -> str:
        data = asdict(self)
        data["duration"] = round(self.duration, 3)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "Verdict":
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"a verdict is a JSON object, not {type(data).__name__}")
        data.pop("duration", None)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


AUTO, MANUAL, PROGRESSIVE = "auto", "manual", "progressive"
MODES = (AUTO, MANUAL, PROGRESSIVE)


@dataclass(frozen=True)
class Analysis:
    """Progressive mode's settings: the canary starts at `step` % and, every `interval` seconds,
    gains `step` % while its live metrics over the last interval hold (success rate at least
    `success_rate` %, p99 at most `p99_ms`), up to `max_weight` %, then becomes stable. It is
    rolled back after `threshold` failed checks. Fewer than `min_requests` requests in the
    interval is no evidence: the step holds."""

    step: int = 10
    max_weight: int = 100
    interval: float = 10.0
    threshold: int = 3
    min_requests: int = 20
    success_rate: float = 99.0
    p99_ms: float = 500.0


@dataclass(frozen=True)
class Scaling:
    """A Swarm service's replica bounds and autoscaling targets (its gatekeeper.scale label).
    Replicas stay within min..max; with `rps`, enough admitted instances that each takes at most
    `rps` requests/s (averaged over `window` seconds); with `p99_ms`, one more while the p99
    through the proxy is above it. At most `step` replicas are added or removed at once, and
    none removed within `cooldown` seconds of the last change."""

    min: int = 1
    max: int = 10
    rps: float = 0.0
    p99_ms: float = 0.0
    cooldown: float = 30.0
    step: int = 2
    window: float = 10.0

    @property
    def automatic(self) -> bool:
        return self.rps > 0 or self.p99_ms > 0


RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled back"      # an analysis's status


@dataclass(frozen=True)
class AnalysisCheck:
    """One judged interval, as the state and the history keep it."""
    time: float
    weight: int
    result: str                      # pass, fail, hold, inconclusive
    reason: str
    canary: Optional[dict] = None    # Measurement as a dict
    stable: Optional[dict] = None


@dataclass(frozen=True)
class AnalysisState:
    """Where a service's progressive analysis stands, kept in Consul KV (gatekeeper/analysis/)
    so a new leader resumes it; gatekeeper.analysis decides each step."""
    service: str
    version: str
    weight: int
    started: float
    next_check: float                # epoch seconds
    failed: int = 0
    status: str = RUNNING
    reason: str = ""
    checks: List[AnalysisCheck] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "AnalysisState":
        data = json.loads(raw)
        checks = [AnalysisCheck(**c) for c in data.pop("checks", [])]
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__}, checks=checks)

    @property
    def last(self) -> Optional[AnalysisCheck]:
        return self.checks[-1] if self.checks else None


@dataclass(frozen=True)
class RoutingPolicy:
    """Which versions of a service the proxy serves, stored per service in Consul KV."""

    service: str
    stable: str = ""
    canary: str = ""
    weight: int = 0            # percent of traffic to the canary
    mode: str = AUTO
    previous: str = ""
    updated: float = 0.0
    aborted: str = ""          # the last canary version taken out of traffic by an abort
    analysis: Analysis = field(default_factory=Analysis)    # used in progressive mode

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def promoted(self, version: str) -> "RoutingPolicy":
        """`version` becomes stable; the stable one is remembered for rollback."""
        previous = self.stable if self.stable and self.stable != version else self.previous
        return replace(self, stable=version, canary="" if self.canary == version else self.canary,
                       weight=0 if self.canary == version else self.weight,
                       previous=previous, aborted="" if self.aborted == version else self.aborted,
                       updated=time.time())

    def with_canary(self, version: str) -> "RoutingPolicy":
        """`version` becomes the canary at weight 0 (no longer counted as aborted)."""
        return replace(self, canary=version, weight=0, aborted="" if self.aborted == version else self.aborted)
