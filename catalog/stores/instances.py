"""Service instances: registrator registers the containers of its host on that host's agent and
applies their checks there; everyone reads them back from the catalog with their health.

An instance registrator made carries its container in its Meta (`instance_from_consul`); an
entry without it is somebody else's and is left out of every read.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Tuple

from .. import route_settings
from ..consul_client import ConsulClient, ConsulError
from ..model import (META_ANALYSIS, META_CONTAINER_ID, META_CONTAINER_NAME, META_CONTAINER_STARTED,
                     META_DOCKER_HEALTH, META_GATE_MIRROR, META_IMAGE, META_MODE, META_PROXY_HOST,
                     META_PROXY_PATH, META_PROXY_STRIP, META_REGISTERED_BY, META_RESTART_POLICY,
                     META_SWARM_SERVICE, META_SWARM_TASK, META_TESTS_IMAGE, META_VERSION, Instance,
                     RegisteredInstance)

GATE_TTL = "87600h"        # the gate is set by gatekeeper, never by expiry
_OWN_META = {META_CONTAINER_ID, META_CONTAINER_NAME, META_IMAGE, META_VERSION, META_TESTS_IMAGE,
             META_PROXY_PATH, META_PROXY_HOST, META_REGISTERED_BY, META_DOCKER_HEALTH, META_PROXY_STRIP,
             META_MODE, META_ANALYSIS, META_SWARM_SERVICE, META_SWARM_TASK, META_GATE_MIRROR,
             META_CONTAINER_STARTED, META_RESTART_POLICY}


class InstanceStore:
    def __init__(self, consul: ConsulClient):
        self.consul = consul

    # --- this agent: registrator's side ------------------------------------------------------
    def register(self, inst: Instance) -> None:
        """Register `inst` with its gate shut; registered again, its checks keep their status
        (Consul keeps a TTL check's status and output when its service is registered again)."""
        checks = [{
            "CheckID": inst.gate_check_id,
            "Name": "integration tests (gatekeeper)",
            # Notes are fixed at registration and shown beside every later result: keep them neutral.
            "Notes": f"integration tests: {inst.tests_image or 'the service default (gatekeeper tests)'}; "
                     "the output is the latest result",
            "TTL": GATE_TTL,
            "Status": "critical",
        }]
        hc = inst.health_check
        if hc:
            check = {"CheckID": inst.health_check_id, "Interval": hc.interval, "Timeout": hc.timeout}
            if hc.kind == "http":
                check.update(Name=f"HTTP {hc.target}", HTTP=f"http://{inst.address}:{inst.port}{hc.target}")
            else:
                check.update(Name="TCP connect", TCP=f"{inst.address}:{inst.port}")
            checks.append(check)
        if inst.docker_health:
            checks.append({
                "CheckID": inst.docker_health_check_id,
                "Name": "Docker HEALTHCHECK",
                "Notes": "set by registrator from Docker's health_status; admitted only when healthy",
                "TTL": GATE_TTL,
                "Status": "critical",
            })
        self.consul.register_service({"ID": inst.id, "Name": inst.service, "Address": inst.address,
                                      "Port": inst.port, "Tags": inst.all_tags(), "Meta": inst.meta(),
                                      "Checks": checks})

    def deregister(self, instance_id: str) -> None:
        """Idempotent: an instance already gone is fine (with ACLs on, Consul answers 500
        'Unknown service' for it, where it answers 200 without)."""
        try:
            self.consul.deregister_service(instance_id)
        except ConsulError as exc:
            if "Unknown service" not in str(exc):
                raise

    def local(self, registered_by: Optional[str] = None) -> Dict[str, Instance]:
        """Instances on this agent that registrator wrote (optionally one registrator's only)."""
        out = {}
        for sid, svc in self.consul.agent_services().items():
            inst = instance_from_consul(svc)
            if inst and (registered_by is None or inst.registered_by == registered_by):
                out[sid] = inst
        return out

    def set_docker_health(self, inst: Instance, status: str) -> None:
        """Mirror Docker's health status (healthy / starting / unhealthy) into the instance's check."""
        self.consul.set_check(inst.docker_health_check_id, status == "healthy",
                              f"Docker reports the container {status}")

    def apply_gate(self, inst: Instance, passing: bool, output: str) -> None:
        """Set the gate check on this agent (registrator, for the instances it registered here)."""
        self.consul.set_check(inst.gate_check_id, passing, output[:1000])

    def gate_checks(self) -> Dict[str, Tuple[str, str]]:
        """check id -> (status, output) of every check on this agent."""
        return {cid: (c.get("Status", ""), c.get("Output", "")) for cid, c in self.consul.agent_checks().items()}

    def node_name(self) -> str:
        """The name of the node this agent is (the host it stands for)."""
        return self.consul.node_name()

    def in_catalog(self, registered_by: str) -> Dict[str, Instance]:
        """The instances one registrator wrote that the catalog holds for this agent's node (an
        instance the agent dropped but could not remove from the catalog is among them)."""
        out = {}
        for sid, svc in self.consul.node_services(self.node_name()).items():
            inst = instance_from_consul(svc)
            if inst and inst.registered_by == registered_by:
                out[sid] = inst
        return out

    # --- the catalog -----------------------------------------------------------------------
    def service_names(self) -> List[str]:
        return sorted(self.consul.catalog_services())

    def of(self, service: str) -> List[RegisteredInstance]:
        """The registrator-made instances of one service, with their checks."""
        return registered_from_health(self.consul.health_service(service))

    def all(self) -> Dict[str, List[RegisteredInstance]]:
        """Every registrator-made instance, per service (sorted), with its checks: each node's
        services and then every check, in two requests and one per node, not one per service
        (a gatekeeper pass over a thousand services, a proxy's full render)."""
        entries: Dict[str, list] = {}
        for node in self.consul.nodes():
            name = node["Node"]
            for svc in self.consul.node_services(name).values():
                entries.setdefault(svc["Service"], []).append({"Node": {"Node": name}, "Service": svc})
        checks: Dict[Tuple[str, str], list] = {}
        for check in self.consul.health_state():
            checks.setdefault((check["Node"], check.get("ServiceID") or ""), []).append(check)
        result = {}
        for name in sorted(entries):
            for entry in entries[name]:
                node = entry["Node"]["Node"]
                entry["Checks"] = checks.get((node, entry["Service"]["ID"]), []) + checks.get((node, ""), [])
            found = registered_from_health(sorted(entries[name], key=lambda e: (e["Node"]["Node"], e["Service"]["ID"])))
            if found:
                result[name] = found
        return result

    def wait_service(self, service: str, index: int, wait: float) -> Tuple[int, list]:
        """Blocking query on one service's instances (health entries, any status)."""
        return self.consul.wait_health_service(service, index, wait)

    def wait_checks(self, index: int, wait: float) -> Tuple[int, list]:
        """Blocking query on every check's state; returns when something changes or at `wait`."""
        return self.consul.wait_health_state(index, wait)


def registered_from_health(entries: list) -> List[RegisteredInstance]:
    """A /v1/health/service/NAME answer -> the registrator-made instances with their checks."""
    out = []
    for entry in entries:
        inst = instance_from_consul(entry["Service"])
        if inst is None:
            continue
        # The instance's own checks, and its node's (serfHealth: the host's agent is alive and
        # reachable; maintenance mode): an instance on a failed host is not admitted.
        checks = {c["CheckID"]: c["Status"] for c in entry["Checks"]
                  if c.get("ServiceID") in (inst.id, "")}
        gate_out = next((c.get("Output", "") for c in entry["Checks"]
                         if c["CheckID"] == inst.gate_check_id), "")
        node = (entry.get("Node") or {}).get("Node", "")
        out.append(RegisteredInstance(replace(inst, node=node) if node else inst, checks, gate_out))
    return out


def instance_from_consul(svc: dict) -> Optional[Instance]:
    """An agent/catalog service entry -> Instance, or None when registrator did not write it."""
    meta = svc.get("Meta") or {}
    if not meta.get(META_REGISTERED_BY) or not meta.get(META_CONTAINER_ID):
        return None
    tags = tuple(t for t in svc.get("Tags") or [] if not t.startswith("version="))
    return Instance(
        id=svc["ID"], service=svc["Service"], address=svc.get("Address", ""),
        port=int(svc.get("Port", 0)), version=meta.get(META_VERSION, ""),
        container_id=meta[META_CONTAINER_ID], container_name=meta.get(META_CONTAINER_NAME, ""),
        image=meta.get(META_IMAGE, ""), registered_by=meta[META_REGISTERED_BY],
        tests_image=meta.get(META_TESTS_IMAGE, ""), proxy_path=meta.get(META_PROXY_PATH, ""),
        proxy_host=meta.get(META_PROXY_HOST, ""), tags=tags,
        route_settings=route_settings.from_meta(meta),
        extra_meta=tuple(sorted((k, v) for k, v in meta.items()
                                if k not in _OWN_META and not route_settings.is_setting_meta(k))),
        docker_health=meta.get(META_DOCKER_HEALTH) == "1",
        strip_prefix=meta.get(META_PROXY_STRIP) == "1",
        mode=meta.get(META_MODE, ""), analysis=meta.get(META_ANALYSIS, ""),
        swarm_service=meta.get(META_SWARM_SERVICE, ""), swarm_task=meta.get(META_SWARM_TASK, ""),
        gate_mirror=meta.get(META_GATE_MIRROR) == "1", started=meta.get(META_CONTAINER_STARTED, ""),
        restart_policy=meta.get(META_RESTART_POLICY, ""),
    )
