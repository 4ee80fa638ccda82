"""What the stack keeps in Consul, read and written as the dataclasses of `catalog.model`.

`ConsulStore` is a `catalog.consul_client.ConsulClient` (which reaches Consul and sets every
call's timeout) with the meaning of each key and service added.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Dict, List, Optional, Tuple

from .consul_client import ConsulClient, ConsulError
from .model import (META_CONTAINER_ID, META_CONTAINER_NAME, META_DOCKER_HEALTH, META_IMAGE,
                    META_ANALYSIS, META_MODE, META_PROXY_HOST, META_PROXY_PATH, META_PROXY_STRIP, META_REGISTERED_BY,
                    META_CONTAINER_STARTED, META_GATE_MIRROR, META_RESTART_POLICY, META_SWARM_SERVICE, META_SWARM_TASK,
                    META_TESTS_IMAGE, META_VERSION, AnalysisState, ContainerAction, GateRecord, Instance,
                    ProxyState, RegisteredInstance, Rejection, RoutingPolicy, Verdict)
from .kv_layout import (ACTIONS, ANALYSIS, DEFAULT_TESTS, GATEKEEPER, GATES, HEALING, HISTORY, POLICIES, REJECTED,
                        RETESTS, SCALING, SERVED, VERDICTS)
from .validation import parse_policy

log = logging.getLogger(__name__)

PROXY_SERVICE = "proxy-reloader"
METRICS_SERVICE = "proxystack-metrics"     # each daemon's metrics endpoint, for Prometheus
GATE_TTL = "87600h"        # the gate is set by gatekeeper, never by expiry
# A proxy's heartbeat: passed every PROXY_HEARTBEAT seconds; a proxy silent for PROXY_ALIVE_TTL is
# taken for dead (killed, its host gone), and Consul removes its registration after PROXY_REAP_AFTER.
PROXY_ALIVE_TTL, PROXY_HEARTBEAT, PROXY_REAP_AFTER = "30s", 10.0, "10m"
_OWN_META = {META_CONTAINER_ID, META_CONTAINER_NAME, META_IMAGE, META_VERSION, META_TESTS_IMAGE,
             META_PROXY_PATH, META_PROXY_HOST, META_REGISTERED_BY, META_DOCKER_HEALTH, META_PROXY_STRIP,
             META_MODE, META_ANALYSIS, META_SWARM_SERVICE, META_SWARM_TASK, META_GATE_MIRROR,
             META_CONTAINER_STARTED, META_RESTART_POLICY}


class ConsulStore(ConsulClient):
    # --- services: registrator's side ----------------------------------------------------
    def register(self, inst: Instance) -> None:
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
        payload = {"ID": inst.id, "Name": inst.service, "Address": inst.address, "Port": inst.port,
                   "Tags": inst.all_tags(), "Meta": inst.meta(), "Checks": checks}
        self.put("/v1/agent/service/register", json.dumps(payload))

    def deregister(self, instance_id: str) -> None:
        """Idempotent: an instance already gone is fine (with ACLs on, Consul answers 500
        'Unknown service' for it, where it answers 200 without)."""
        try:
            self.put(f"/v1/agent/service/deregister/{instance_id}")
        except ConsulError as exc:
            if "Unknown service" not in str(exc):
                raise

    def local_instances(self, registered_by: Optional[str] = None) -> Dict[str, Instance]:
        """Instances on this agent that registrator wrote (optionally one registrator's only)."""
        out = {}
        for sid, svc in self.agent_services().items():
            inst = instance_from_consul(svc)
            if inst and (registered_by is None or inst.registered_by == registered_by):
                out[sid] = inst
        return out

    def record_rejection(self, rejection: Rejection) -> None:
        """Why a container was not registered, for `gatekeeper status` and `why` to show."""
        self.kv_put(REJECTED + rejection.container_name, rejection.to_json())

    def forget_rejection(self, container_name: str) -> None:
        self.kv_delete(REJECTED + container_name)

    def rejections(self) -> Dict[str, Rejection]:
        """Container name -> its rejection; unreadable records are skipped."""
        return self._records_under(REJECTED, Rejection.from_json)

    def _records_under(self, prefix: str, parse) -> dict:
        """Every JSON record under a KV prefix, by the rest of its key; unreadable ones skipped."""
        out = {}
        for key, raw in self.kv_list(prefix).items():
            try:
                out[key[len(prefix):]] = parse(raw)
            except (ValueError, TypeError):
                continue
        return out

    def set_docker_health(self, inst: Instance, status: str) -> None:
        """Mirror Docker's health status (healthy / starting / unhealthy) into the instance's check."""
        verb = "pass" if status == "healthy" else "fail"
        self.put(f"/v1/agent/check/{verb}/{inst.docker_health_check_id}",
                  params=[("note", f"Docker reports the container {status}")])

    # --- gate: gatekeeper decides, the instance's own host applies -------------------------
    def set_gate(self, inst: Instance, passing: bool, output: str) -> None:
        """Record the gate of `inst` for its node's registrator to apply. Every write wakes it, the
        same decision written again too (the record carries its time): gatekeeper shuts a forged
        gate check by writing its decision again."""
        if not inst.node:
            raise ValueError(f"{inst.id}: the instance's node is unknown (read it from the catalog)")
        record = GateRecord(passing, output[:1000], inst.container_id, inst.started, time.time())
        self.kv_put(f"{GATES}{inst.node}/{inst.id}", record.to_json())

    def gate_records(self, node: str, index: int = 0, wait: float = 0.0) -> Tuple[int, Dict[str, GateRecord]]:
        """The gate records of one node's instances (blocking when `index` is given)."""
        return self._node_records(GATES, node, index, wait, GateRecord.from_json,
                                  "gate record ignored (the gate stays shut)")

    # --- container actions: gatekeeper asks, the container's own host carries them out --------
    def request_action(self, inst: Instance, action: str, reason: str, timeout: int = 10) -> None:
        """Ask the registrator of `inst`'s node to stop, restart or kill this run of its container."""
        if not inst.node:
            raise ValueError(f"{inst.id}: the instance's node is unknown (read it from the catalog)")
        record = ContainerAction(action, inst.container_id, inst.started, reason[:300], timeout, time.time())
        self.kv_put(f"{ACTIONS}{inst.node}/{inst.id}", record.to_json())

    def withdraw_action(self, inst: Instance, action: str) -> bool:
        """Take back `action` if it was asked for the run of `inst` that is running now (a restart
        asked to heal an instance that healed before its host's registrator carried it out). A
        record for another run or another action stays. True when a record was taken back."""
        key = f"{ACTIONS}{inst.node}/{inst.id}"
        index, raw = self.kv_get(key)
        if raw is None:
            return False
        try:
            record = ContainerAction.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return False
        if (record.action, record.container_id, record.started) != (action, inst.container_id, inst.started):
            return False
        return self.kv_delete(key, cas=index)

    def action_records(self, node: str, index: int = 0, wait: float = 0.0) -> Tuple[int, Dict[str, ContainerAction]]:
        """The container actions asked of one node (blocking when `index` is given)."""
        return self._node_records(ACTIONS, node, index, wait, ContainerAction.from_json,
                                  "container action ignored (nothing is done)")

    def _node_records(self, kind: str, node: str, index: int, wait: float, parse, what: str) -> Tuple[int, dict]:
        prefix = f"{kind}{node}/"
        if index:
            idx, raw = self.wait_kv(prefix, index, wait)
        else:
            idx, raw = self.kv_list_indexed(prefix)
        out = {}
        for key, value in raw.items():
            try:
                out[key[len(prefix):]] = parse(value)
            except (ValueError, KeyError, TypeError):
                log.warning("%s: damaged %s", key, what)
        return int(idx), out

    def local_gate_checks(self) -> Dict[str, Tuple[str, str]]:
        """check id -> (status, output) of every check on this agent."""
        return {cid: (c.get("Status", ""), c.get("Output", "")) for cid, c in self.agent_checks().items()}

    def apply_gate(self, inst: Instance, passing: bool, output: str) -> None:
        """Set the gate check on this agent (registrator, for the instances it registered here)."""
        self.set_check(inst.gate_check_id, passing, output[:1000])

    # --- reading the catalog ---------------------------------------------------------------
    def service_names(self) -> List[str]:
        return sorted(self.catalog_services())

    def instances(self, service: str) -> List[RegisteredInstance]:
        return registered_from_health(self.health_service(service))

    def all_instances(self) -> Dict[str, List[RegisteredInstance]]:
        """Every registrator-made instance, per service."""
        result = {}
        for name in self.service_names():
            found = self.instances(name)
            if found:
                result[name] = found
        return result

    def wait_service(self, service: str, index: int, wait: float) -> Tuple[int, list]:
        """Blocking query on one service's instances (health entries, any status)."""
        return self.wait_health_service(service, index, wait)

    def wait_checks(self, index: int, wait: float) -> Tuple[int, list]:
        """Blocking query on every check's state; returns when something changes or at `wait`."""
        return self.wait_health_state(index, wait)

    # --- verdicts and policies ------------------------------------------------------------
    def _record(self, key: str, parse, what: str):
        """A JSON record kept in KV, parsed; None when absent or unreadable (logged: one damaged
        record must not stop a daemon)."""
        raw = self.kv_get(key)[1]
        if not raw:
            return None
        try:
            return parse(raw)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("ignoring unreadable %s: %s", what, exc)
            return None

    def verdict(self, instance_id: str) -> Optional[Verdict]:
        return self._record(VERDICTS + instance_id, Verdict.from_json, f"verdict for {instance_id}")

    def put_verdict(self, verdict: Verdict) -> None:
        self.kv_put(VERDICTS + verdict.instance_id, verdict.to_json())

    def verdict_ids(self) -> List[str]:
        """The instance ids that have a stored verdict (keys only: cheap even with thousands)."""
        return [k[len(VERDICTS):] for k in self.kv_keys(VERDICTS)]

    def forget_verdict(self, instance_id: str) -> None:
        """Remove the verdict of an instance long gone, its gate record and any container action
        asked for it (on whichever node)."""
        self.kv_delete(VERDICTS + instance_id)
        for key in self.kv_keys(GATES) + self.kv_keys(ACTIONS):
            if key.endswith("/" + instance_id):
                self.kv_delete(key)

    def policy_services(self) -> List[str]:
        """Services with a routing policy or a default test image, registered or not."""
        names = {k[len(POLICIES):] for k in self.kv_keys(POLICIES)}
        names |= {k[len(DEFAULT_TESTS):] for k in self.kv_keys(DEFAULT_TESTS)}
        return sorted(n for n in names if n and "/" not in n)

    def forget_service(self, service: str) -> List[str]:
        """Remove a service's policy, default test image and history; return the keys removed."""
        own = (POLICIES + service, DEFAULT_TESTS + service, ANALYSIS + service, SCALING + service)
        keys = [k for k in own if self.kv_get(k)[1] is not None]
        keys += self.kv_keys(f"{HISTORY}{service}/")
        for key in own:
            self.kv_delete(key)
        self.kv_delete_tree(f"{HISTORY}{service}/")
        return keys

    def policy(self, service: str) -> Tuple[int, Optional[RoutingPolicy]]:
        """(ModifyIndex, policy); a policy that fails validation raises InvalidValue."""
        index, raw = self.kv_get(POLICIES + service)
        if not raw:
            return index, None
        return index, parse_policy(raw)

    def put_policy(self, policy: RoutingPolicy, cas: int) -> bool:
        """Check-and-set: False when someone else changed the policy since `cas` was read."""
        return self.kv_put(POLICIES + policy.service, policy.to_json(), cas=cas)

    def default_tests_image(self, service: str) -> str:
        return self.kv_get(DEFAULT_TESTS + service)[1] or ""

    def set_default_tests_image(self, service: str, image: str) -> None:
        self.kv_put(DEFAULT_TESTS + service, image)

    def wait_gatekeeper_state(self, index: int, wait: float) -> Tuple[int, Dict[str, str]]:
        """Blocking query on everything gatekeeper keeps (policies, retests, default images)."""
        return self.wait_kv(GATEKEEPER, index, wait)

    def analysis(self, service: str) -> Optional[AnalysisState]:
        """Where the service's progressive analysis stands, if it has one."""
        return self._record(ANALYSIS + service, AnalysisState.from_json, f"analysis state of {service}")

    def put_analysis(self, state: AnalysisState) -> None:
        self.kv_put(ANALYSIS + state.service, state.to_json())

    def scaling(self, service: str) -> Optional[dict]:
        """The last change of a Swarm service's replica count: time, replicas, previous, reason, by."""
        return self._record(SCALING + service, json.loads, f"scaling record of {service}")

    def put_scaling(self, service: str, record: dict) -> None:
        self.kv_put(SCALING + service, json.dumps(record, sort_keys=True))

    def healing(self, instance_id: str) -> Optional[dict]:
        """Restarts tried on an unhealthy instance's container: tries, last, gave_up, reason."""
        return self._record(HEALING + instance_id, json.loads, f"healing record of {instance_id}")

    def healing_records(self) -> Dict[str, dict]:
        return self._records_under(HEALING, json.loads)

    def put_healing(self, instance_id: str, record: Optional[dict]) -> None:
        if record is None:
            self.kv_delete(HEALING + instance_id)
        else:
            self.kv_put(HEALING + instance_id, json.dumps(record, sort_keys=True))

    def request_retest(self, instance_id: str) -> None:
        self.kv_put(RETESTS + instance_id, json.dumps({"time": time.time()}))

    def retest_requests(self) -> List[str]:
        return [k[len(RETESTS):] for k in self.kv_list(RETESTS)]

    def clear_retest(self, instance_id: str) -> None:
        self.kv_delete(RETESTS + instance_id)

    def add_history(self, service: str, event: str, **details) -> None:
        entry = {"time": time.time(), "event": event, **details}
        self.kv_put(f"{HISTORY}{service}/{time.time_ns():020d}", json.dumps(entry, sort_keys=True))

    def history(self, service: str) -> List[dict]:
        out = []
        for key, raw in sorted(self.kv_list(f"{HISTORY}{service}/").items()):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out

    # --- what each proxy serves (written by proxy-reloader after nginx confirmed it) --------
    def report_served(self, proxy_id: str, service: str, served: Optional[dict]) -> None:
        key = f"{SERVED}{proxy_id}/{service}"
        if served is None:
            self.kv_delete(key)
        else:
            self.kv_put(key, json.dumps(served, sort_keys=True))

    def forget_served(self, proxy_id: str) -> None:
        self.kv_delete_tree(f"{SERVED}{proxy_id}/")

    def proxies(self) -> List[ProxyState]:
        """The proxies that announce themselves in Consul (`--report-check`), alive or not. A
        registration without a heartbeat check (an older proxy-reloader) counts as alive."""
        entries = self.health_service(PROXY_SERVICE)
        out = []
        for e in entries:
            sid = e["Service"]["ID"]
            beat = next((c for c in e.get("Checks") or [] if c.get("CheckID") == sid + ":alive"), None)
            alive = beat is None or beat.get("Status") == "passing"
            out.append(ProxyState(sid, alive, "" if alive else (beat.get("Output") or beat.get("Status") or "")))
        return sorted(out, key=lambda p: p.id)

    def served(self, proxy_id: str, service: str) -> Optional[dict]:
        raw = self.kv_get(f"{SERVED}{proxy_id}/{service}")[1]
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def self_reporter(self, name: str, service_id: str, address: str, alive_ttl: str = PROXY_ALIVE_TTL,
                      reap_after: str = PROXY_REAP_AFTER) -> "SelfReport":
        """Register a component as a service with two TTL checks: `:config` (is its config
        applied, with a note) and `:alive` (a heartbeat; Consul removes the registration once it
        has been critical for `reap_after`, so a killed component does not count for ever)."""
        return SelfReport(self, name, service_id, address, alive_ttl, reap_after).register()

    def announce_metrics(self, service_id: str, component: str, address: str) -> None:
        """Register a daemon's metrics endpoint as an instance of `proxystack-metrics` (which
        Prometheus discovers); no check: a target that stops answering shows as down."""
        host, _, port = address.rpartition(":")
        self.put("/v1/agent/service/register", json.dumps({
            "ID": service_id, "Name": METRICS_SERVICE, "Address": host, "Port": int(port),
            "Meta": {"component": component}}))

    def withdraw(self, service_id: str) -> None:
        """Deregister a service this process registered for itself (metrics, proxy)."""
        self.put(f"/v1/agent/service/deregister/{service_id}")


class SelfReport:
    """A component's own registration (ConsulStore.self_reporter): `report(ok, note)` sets its
    config check, `heartbeat()` its alive check. Either registers it again when Consul no longer
    knows it (removed after a long silence, or by hand)."""

    def __init__(self, store: ConsulStore, name: str, service_id: str, address: str, alive_ttl: str,
                 reap_after: str):
        self.store, self.name, self.id, self.address = store, name, service_id, address
        self.alive_ttl, self.reap_after = alive_ttl, reap_after
        self.config_check, self.alive_check = service_id + ":config", service_id + ":alive"
        self.last = (True, "starting")

    def register(self) -> "SelfReport":
        host, _, port = self.address.rpartition(":")
        ok, note = self.last
        self.store.put("/v1/agent/service/register", json.dumps({
            "ID": self.id, "Name": self.name, "Address": host, "Port": int(port),
            "Checks": [
                {"CheckID": self.config_check, "Name": "config applied", "TTL": GATE_TTL,
                 "Status": "passing" if ok else "critical"},
                {"CheckID": self.alive_check, "Name": "alive", "TTL": self.alive_ttl, "Status": "passing",
                 "Notes": f"passed by the component while it runs; critical after {self.alive_ttl} of silence",
                 "DeregisterCriticalServiceAfter": self.reap_after}]}))
        self.store.put(self._path(self.config_check, ok), params=[("note", note[:1000])])
        return self

    def __call__(self, ok: bool, note: str) -> None:
        self.last = (ok, note)
        self._set(self.config_check, ok, note)

    def heartbeat(self) -> None:
        self._set(self.alive_check, True, "alive")

    @staticmethod
    def _path(check_id: str, ok: bool) -> str:
        return f"/v1/agent/check/{'pass' if ok else 'fail'}/{check_id}"

    def _set(self, check_id: str, ok: bool, note: str) -> None:
        path = self._path(check_id, ok)
        try:
            self.store.put(path, params=[("note", note[:1000])])
        except ConsulError:
            # Consul does not know the check (the registration was removed): register again.
            self.register()
            self.store.put(path, params=[("note", note[:1000])])


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
        extra_meta=tuple(sorted((k, v) for k, v in meta.items() if k not in _OWN_META)),
        docker_health=meta.get(META_DOCKER_HEALTH) == "1",
        strip_prefix=meta.get(META_PROXY_STRIP) == "1",
        mode=meta.get(META_MODE, ""), analysis=meta.get(META_ANALYSIS, ""),
        swarm_service=meta.get(META_SWARM_SERVICE, ""), swarm_task=meta.get(META_SWARM_TASK, ""),
        gate_mirror=meta.get(META_GATE_MIRROR) == "1", started=meta.get(META_CONTAINER_STARTED, ""),
        restart_policy=meta.get(META_RESTART_POLICY, ""),
    )
