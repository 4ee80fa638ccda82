"""In-memory stand-ins for unit tests. Each has a twin test against the real component
(tests/integration/test_registry_contract.py, test_docker_source.py, test_tester.py)."""
from __future__ import annotations

import time
from typing import Dict, List, Optional

from catalog.model import Instance, Rejection
from registrator.docker_source import Container, PublishedPort


class InMemoryInstances:
    """Stands in for catalog.stores.InstanceStore: this agent's registrations."""

    def __init__(self, calls: Optional[List[tuple]] = None):
        self.services: Dict[str, Instance] = {}
        self.calls: List[tuple] = [] if calls is None else calls
        self.docker_health: Dict[str, str] = {}
        self.statuses: Dict[str, str] = {}        # gate check id -> status
        self.stuck: Dict[str, Instance] = {}       # dropped by the agent, left in the catalog

    def register(self, inst: Instance) -> None:
        self.calls.append(("register", inst.id))
        self.services[inst.id] = inst
        self.statuses.setdefault(inst.gate_check_id, "critical")    # registered again: kept

    def apply_gate(self, inst: Instance, passing: bool, output: str) -> None:
        self.statuses[inst.gate_check_id] = "passing" if passing else "critical"

    def gate_checks(self) -> Dict[str, tuple]:
        return {cid: (status, "") for cid, status in self.statuses.items()}

    def in_catalog(self, registered_by: str) -> Dict[str, Instance]:
        """The catalog's entries for this node: the agent's, and any it dropped that stayed (`stuck`)."""
        return {**self.local(registered_by), **{i: s for i, s in self.stuck.items() if s.registered_by == registered_by}}

    def deregister(self, instance_id: str) -> None:
        self.calls.append(("deregister", instance_id))
        self.services.pop(instance_id, None)
        self.stuck.pop(instance_id, None)
        self.statuses = {cid: s for cid, s in self.statuses.items() if not cid.startswith(instance_id + ":")}

    def local(self, registered_by: Optional[str] = None) -> Dict[str, Instance]:
        return {i: s for i, s in self.services.items() if registered_by in (None, s.registered_by)}

    def set_docker_health(self, inst: Instance, status: str) -> None:
        self.calls.append(("docker_health", inst.id, status))
        self.docker_health[inst.id] = status


class InMemoryRejections:
    """Stands in for catalog.stores.RejectionStore."""

    def __init__(self, calls: Optional[List[tuple]] = None):
        self.rejected: Dict[str, Rejection] = {}
        self.calls: List[tuple] = [] if calls is None else calls

    def put(self, rejection: Rejection) -> None:
        self.calls.append(("record_rejection", rejection.container_name))
        self.rejected[rejection.container_name] = rejection

    def forget(self, container_name: str) -> None:
        self.calls.append(("forget_rejection", container_name))
        self.rejected.pop(container_name, None)

    def all(self) -> Dict[str, Rejection]:
        return dict(self.rejected)


class InMemoryRegistry:
    """The two stores registrator's bridge writes (`instances`, `rejections`), with one log of
    the calls made to either, and their contents at hand (`services`, `rejected`, `docker_health`)."""

    def __init__(self):
        self.calls: List[tuple] = []
        self.instances = InMemoryInstances(self.calls)
        self.rejections = InMemoryRejections(self.calls)
        self.services, self.docker_health = self.instances.services, self.instances.docker_health
        self.rejected = self.rejections.rejected


class FakeDocker:
    def __init__(self):
        self.containers: Dict[str, Container] = {}

    def add(self, cid: str, name: str, image: str = "demo:v1", labels=None, env=None,
            ports=((8080, 32768),), running=True, health=None) -> Container:
        c = Container(id=cid, name=name, image=image, running=running, labels=dict(labels or {}),
                      env=dict(env or {}),
                      ports=tuple(PublishedPort(cp, "tcp", "127.0.0.1", hp) for cp, hp in ports),
                      exposed=tuple(cp for cp, _ in ports), internal_ip="192.0.2.10", health=health)
        self.containers[cid] = c
        return c

    def inspect(self, cid: str) -> Optional[Container]:
        return self.containers.get(cid)

    def running_ids(self) -> List[str]:
        return [cid for cid, c in self.containers.items() if c.running]


class NodeRecords:
    """One node's KV records as Consul's blocking queries answer them (registrator.follow): the
    first answer at index 2, then nothing changes and each later query waits, as Consul does.
    Keeps the (node, index) of every query in `asked`. Its `node_name` is the agent's
    (catalog.stores.InstanceStore), `answer` what a NodeRecordStore read returns."""

    def __init__(self, records=None):
        self.node_records, self.asked = dict(records or {}), []

    def node_name(self):
        return "h2"

    def answer(self, node, index=0, wait=0.0):
        self.asked.append((node, index))
        if index > 1:
            time.sleep(min(wait, 0.05))
            return index, dict(self.node_records)
        return 2, dict(self.node_records)


class FakeNginx:
    """proxy_reloader.nginx.Nginx as the runner uses it (validate, install, current,
    served_version, master_pid, apply), without an nginx binary. `refuse` is a list of
    (fragments, nginx's complaint): `nginx -t` refuses a config that holds every fragment of one
    entry. A candidate is a real file in the prefix, removed when installed (swapped in) or
    refused, as the real one. Keeps each config validated and each installed (reloaded)."""

    def __init__(self, prefix, refuse=(), conf: Optional[str] = None):
        from pathlib import Path
        self.prefix = Path(prefix)
        self.refuse = list(refuse)
        self.conf = conf
        self.validated: List[str] = []
        self.installed: List[str] = []
        self.reload_error = None            # install raises it (a reload that did not take)
        self.pid: Optional[int] = 4242

    def current(self) -> Optional[str]:
        return self.conf

    def validate(self, text: str):
        from proxy_reloader.nginx import NginxError
        self.validated.append(text)
        for fragments, complaint in self.refuse:
            if all(f in text for f in fragments):
                raise NginxError(complaint)
        candidate = self.prefix / f".nginx.conf.{len(self.validated)}.tmp"
        candidate.write_text(text)
        return candidate

    def install(self, candidate, text: str) -> None:
        assert candidate.read_text() == text, "installs the candidate validated for this text"
        candidate.unlink()
        if self.reload_error is not None:
            raise self.reload_error
        self.conf = text
        self.installed.append(text)

    def served_version(self) -> str:
        from proxy_reloader.render import config_version
        return config_version(self.conf or "")

    def master_pid(self) -> Optional[int]:
        return self.pid

    def apply(self, text: str) -> bool:
        if text == self.conf:
            return False
        self.install(self.validate(text), text)
        return True


class FakeSwarm:
    """Swarm services by the Consul service they register as; `scaled` is what was asked, and
    `refuse` an error every scale raises (as Swarm refusing it)."""

    def __init__(self, *services, active=True, refuse=None):
        self.services = {s.registers_as: s for s in services}
        self.is_active, self.refuse, self.scaled = active, refuse, []

    def active(self):
        return self.is_active

    def service(self, name):
        return self.services.get(name)

    def scaled_services(self):
        return list(self.services.values())

    def scale(self, svc, replicas):
        if self.refuse:
            raise self.refuse
        self.scaled.append((svc.name, replicas))


class FakeTester:
    """Stands in for gatekeeper's DockerTester: every run ends as told at once, and is recorded
    as (test image, instance URL)."""

    def __init__(self, state="passed", summary="9/9 passed in 0.1 s"):
        self.state, self.summary, self.runs = state, summary, []

    def remove_leftovers(self, iid):
        pass

    def abort_all(self):
        pass

    def close(self):
        pass

    def run(self, image, url, iid):
        from gatekeeper.admission.tester import RunResult
        self.runs.append((image, url))
        return RunResult(self.state, self.summary, "log", time.time(), time.time())
