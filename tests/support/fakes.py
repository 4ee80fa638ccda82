"""In-memory stand-ins for unit tests. Each has a twin test against the real component
(tests/integration/test_registry_contract.py, test_docker_source.py)."""
from __future__ import annotations

import time
from typing import Dict, List, Optional

from catalog.model import Instance, Rejection
from registrator.docker_source import Container, PublishedPort


class InMemoryRegistry:
    def __init__(self):
        self.services: Dict[str, Instance] = {}
        self.calls: List[tuple] = []
        self.rejected: Dict[str, Rejection] = {}
        self.docker_health: Dict[str, str] = {}

    def register(self, inst: Instance) -> None:
        self.calls.append(("register", inst.id))
        self.services[inst.id] = inst

    def deregister(self, instance_id: str) -> None:
        self.calls.append(("deregister", instance_id))
        self.services.pop(instance_id, None)

    def local_instances(self, registered_by: Optional[str] = None) -> Dict[str, Instance]:
        return {i: s for i, s in self.services.items() if registered_by in (None, s.registered_by)}

    def record_rejection(self, rejection: Rejection) -> None:
        self.calls.append(("record_rejection", rejection.container_name))
        self.rejected[rejection.container_name] = rejection

    def forget_rejection(self, container_name: str) -> None:
        self.calls.append(("forget_rejection", container_name))
        self.rejected.pop(container_name, None)

    def rejections(self) -> Dict[str, Rejection]:
        return dict(self.rejected)

    def set_docker_health(self, inst: Instance, status: str) -> None:
        self.calls.append(("docker_health", inst.id, status))
        self.docker_health[inst.id] = status


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
    Keeps the (node, index) of every query in `asked`."""

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
