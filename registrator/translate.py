"""One container -> the Consul instances it should have, every label checked on the way.

Conventions follow gliderlabs/registrator (labels, or the same names as environment
variables; labels win): SERVICE_NAME, SERVICE_<port>_NAME, SERVICE_TAGS, SERVICE_IGNORE,
SERVICE_<port>_IGNORE, SERVICE_CHECK_HTTP or SERVICE_CHECK_TCP (+ _INTERVAL, _TIMEOUT); other
SERVICE_* keys become metadata. Registrator's forms this stack does not take (SERVICE_ID, the
other SERVICE_CHECK_* kinds, per-port keys other than NAME and IGNORE) refuse the container with
the reason, rather than turning into metadata or nothing. Ours: gatekeeper.tests,
gatekeeper.version, gatekeeper.mode, gatekeeper.analysis, proxy.path, proxy.host,
proxy.strip_prefix and the per-route proxy.* settings. A Swarm task's container registers like
any other, named after its Swarm service unless SERVICE_NAME says otherwise.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Dict, List

from catalog import route_settings, validation as v
from catalog.images import image_name, image_version
from catalog.model import MODES, UDP, HealthCheck, Instance

from .docker_source import Container

log = logging.getLogger(__name__)

SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|KEY|CREDENTIAL", re.I)
_RESERVED = {"NAME", "TAGS", "IGNORE", "CHECK_HTTP", "CHECK_TCP", "CHECK_INTERVAL", "CHECK_TIMEOUT"}
_PORT_KEY = re.compile(r"SERVICE_(\d+)_(.+)")
_PER_PORT = {"NAME", "IGNORE"}
CHECKS_TAKEN = ("a health check is SERVICE_CHECK_HTTP=/path or SERVICE_CHECK_TCP=true, with SERVICE_CHECK_INTERVAL "
                "and SERVICE_CHECK_TIMEOUT")
# The keys of our own labels, taken from the environment as well (labels win).
_OURS = ("SERVICE_", "gatekeeper.", "proxy.")


@dataclass(frozen=True)
class Settings:
    hostname: str                 # first part of every instance id
    address: str = "127.0.0.1"    # advertised address of published ports
    registered_by: str = "registrator"
    explicit: bool = False        # only containers with SERVICE_NAME
    filter_label: str = ""        # KEY=VALUE: only containers carrying this label
    exclude_labels: tuple = ()    # containers carrying any of these label keys are skipped
    internal: bool = False        # register the container's own address and exposed ports


class Rejected(Exception):
    """The container is not registered; `str()` names the container, the label and the rule."""

    def __init__(self, container: Container, label: str, reason: str, service: str = ""):
        self.container, self.label, self.reason, self.service = container, label, reason, service
        super().__init__(f"container {container.name} ({container.id[:12]}) not registered: "
                         f"label {label}: {reason}")


class Skipped(Exception):
    """The container is deliberately not registered (not an error); `str()` says why."""

    def __init__(self, container: Container, reason: str):
        self.container, self.reason = container, reason
        super().__init__(f"container {container.name} ({container.id[:12]}) skipped: {reason}")


def merged_config(c: Container) -> Dict[str, str]:
    """Environment first, labels over it: registrator's precedence."""
    cfg = {k: val for k, val in c.env.items() if k.startswith(_OURS)}
    cfg.update(c.labels)
    return cfg


def default_name(c: Container) -> str:
    """Without SERVICE_NAME: a Swarm task's service name, else the image's name (registrator's rule)."""
    return c.swarm_service or image_name(c.image)


def selected(c: Container, s: Settings) -> bool:
    if any(key in c.labels for key in s.exclude_labels):
        return False
    if s.filter_label:
        key, _, want = s.filter_label.partition("=")
        if c.labels.get(key) != want:
            return False
    return True


def instances_for(c: Container, s: Settings) -> List[Instance]:
    """The instances `c` should have (possibly none); raises Rejected on any invalid value."""
    if not c.running or not selected(c, s):
        return []
    cfg = merged_config(c)
    if cfg.get("SERVICE_IGNORE"):
        raise Skipped(c, f"SERVICE_IGNORE is set (to {cfg['SERVICE_IGNORE']!r}; as in registrator, any "
                         "non-empty value ignores the container)")
    base_name = cfg.get("SERVICE_NAME")
    if s.explicit and not base_name:
        raise Skipped(c, "it has no SERVICE_NAME and registrator runs with --explicit")
    wanted_name = base_name or default_name(c)
    wanted_name = wanted_name if v.valid("service", wanted_name) else ""
    endpoints = _endpoints(c, s)
    for key in cfg:
        m = _PORT_KEY.fullmatch(key)
        if m and int(m.group(1)) not in {e[0] for e in endpoints}:
            raise Rejected(c, key, f"port {m.group(1)} is not {'exposed' if s.internal else 'published'} "
                                   f"by the container (it has {sorted({e[0] for e in endpoints}) or 'none'})",
                           wanted_name)
    endpoints = [e for e in endpoints if not cfg.get(f"SERVICE_{e[0]}_IGNORE")]
    if not endpoints:
        log.log(logging.INFO if base_name else logging.DEBUG,
                "container %s (%s) has no %s port; not registered%s", c.name, c.id[:12],
                "exposed" if s.internal else "published", "" if s.internal else (
                    " (a Swarm service publishes a task's port with --publish mode=host,target=PORT;"
                    " the ingress mode's virtual port is not the task's)" if c.swarm_service else
                    " (publish one with -p or -P, or run registrator with --internal)"))
        return []
    unsupported = _unsupported(cfg)          # a container that would be registered, asking for what is not taken
    if unsupported:
        raise Rejected(c, *unsupported, wanted_name)
    try:
        return [_instance(c, s, cfg, e, base_name, len(endpoints) > 1) for e in endpoints]
    except v.InvalidValue as exc:
        raise Rejected(c, exc.field, f"{exc.value!r} must be {exc.rule}", wanted_name) from None


def _unsupported(cfg: Dict[str, str]):
    """(key, reason) for the first of registrator's forms this stack does not take, or None."""
    for key in sorted(cfg):
        if key == "SERVICE_ID":
            return key, ("is not supported: an instance's id is HOST:CONTAINER:PORT, so that every part "
                         "recognises its own (remove it)")
        if key.startswith("SERVICE_CHECK_") and key[len("SERVICE_"):] not in _RESERVED:
            return key, f"is not supported ({key[len('SERVICE_CHECK_'):].lower()} checks): {CHECKS_TAKEN}"
        m = _PORT_KEY.fullmatch(key)
        if m and m.group(2) not in _PER_PORT:
            return key, (f"is not supported per port: only SERVICE_<port>_NAME and SERVICE_<port>_IGNORE are; "
                         f"SERVICE_{m.group(2)} applies to every port")
    return None


def _endpoints(c: Container, s: Settings):
    """(container port, address, port, protocol) per endpoint to register."""
    if s.internal:
        return [(p, c.internal_ip, p, "tcp") for p in c.exposed] if c.internal_ip else []
    return [(p.container_port, s.address, p.host_port, p.protocol) for p in c.ports]


def _instance(c, s, cfg, endpoint, base_name, several) -> Instance:
    container_port, address, port, protocol = endpoint
    per_port = cfg.get(f"SERVICE_{container_port}_NAME")
    if per_port:
        name = per_port
        field = f"SERVICE_{container_port}_NAME"
    else:
        name = base_name or default_name(c)
        if several:
            name = f"{name}-{container_port}"
        field = "SERVICE_NAME"
    v.check(field, name, "service")
    v.check("container name", c.name, "container_name")
    version = cfg.get("gatekeeper.version") or image_version(c.image)
    v.check("gatekeeper.version" if "gatekeeper.version" in cfg else "image tag", version, "version")
    tests = cfg.get("gatekeeper.tests", "")
    if tests:
        v.check("gatekeeper.tests", tests, "image")
    v.check("image", c.image, "image")
    path = cfg.get("proxy.path", "")
    if path:
        v.check("proxy.path", path, "proxy_path")
    host = cfg.get("proxy.host", "")
    if host:
        host = route_settings.parse_hosts("proxy.host", host)
    per_route = route_settings.from_labels(cfg)
    strip = v.check("proxy.strip_prefix", cfg.get("proxy.strip_prefix", "false"), "flag") == "true"
    mode = cfg.get("gatekeeper.mode", "")
    if mode and mode not in MODES:
        raise v.InvalidValue("gatekeeper.mode", mode, "auto, manual or progressive")
    analysis = cfg.get("gatekeeper.analysis", "").strip()
    if analysis:
        settings = v.parse_analysis_label(analysis)
        analysis = ",".join(f"{k}={settings[k]}" for k in sorted(settings))
    tags = tuple(sorted({t.strip() for t in cfg.get("SERVICE_TAGS", "").split(",") if t.strip()}))
    for t in tags:
        v.check("SERVICE_TAGS", t, "tag")
    udp = protocol == "udp"            # marked as registrator marks it: tag udp, id suffix :udp
    if udp:
        tags = tuple(sorted(set(tags) | {UDP}))
    return Instance(
        id=f"{s.hostname}:{c.name}:{container_port}" + (":udp" if udp else ""),
        service=name, address=v.check("address", address), port=port, version=version,
        container_id=c.id, container_name=c.name, image=c.image, registered_by=s.registered_by,
        tests_image=tests, proxy_path=path or f"/{name}/", proxy_host=host, route_settings=per_route, tags=tags,
        extra_meta=_extra_meta(cfg), health_check=_health_check(cfg),
        docker_health=c.health is not None, strip_prefix=strip, mode=mode, analysis=analysis,
        swarm_service=c.swarm_service, swarm_task=c.swarm_task, gate_mirror=c.gate_mirror,
        started=c.started_at, restart_policy="" if c.restart_policy == "no" else c.restart_policy)


def _health_check(cfg: Dict[str, str]):
    timing = dict(
        interval=v.check("SERVICE_CHECK_INTERVAL", cfg.get("SERVICE_CHECK_INTERVAL", "5s"), "duration"),
        timeout=v.check("SERVICE_CHECK_TIMEOUT", cfg.get("SERVICE_CHECK_TIMEOUT", "2s"), "duration"))
    if cfg.get("SERVICE_CHECK_HTTP"):
        return HealthCheck("http", v.check("SERVICE_CHECK_HTTP", cfg["SERVICE_CHECK_HTTP"], "check_path"), **timing)
    if cfg.get("SERVICE_CHECK_TCP"):
        if cfg["SERVICE_CHECK_TCP"].lower() not in ("true", "1", "yes"):
            raise v.InvalidValue("SERVICE_CHECK_TCP", cfg["SERVICE_CHECK_TCP"], "true (connect to the instance's port)")
        return HealthCheck("tcp", **timing)
    return None


def _extra_meta(cfg: Dict[str, str]):
    meta = {}
    for key, value in cfg.items():
        if not key.startswith("SERVICE_") or _PORT_KEY.fullmatch(key):
            continue
        short = key[len("SERVICE_"):]
        if short in _RESERVED or SECRET.search(short) or route_settings.is_setting_meta(short.lower()):
            continue
        meta[v.check(key, short.lower(), "meta_key")] = v.check(key, value, "meta_value")
    return tuple(sorted(meta.items()))
