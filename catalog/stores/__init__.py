"""What the stack keeps in Consul, one store per owner of a part of it (catalog.kv_layout names
the KV prefixes), each built on one `catalog.consul_client.ConsulClient`:

    verdicts      VerdictStore      gatekeeper's verdicts and the retest requests
    policies      PolicyStore       routing policies and default test images
    history       HistoryStore      each service's events
    analysis      AnalysisStore     where progressive analyses stand
    scaling       ScalingStore      the last replica-count change of Swarm services
    healing       HealingStore      restarts tried on unhealthy instances
    node_records  NodeRecordStore   the gates and container actions each node's registrator applies
    rejections    RejectionStore    containers registrator did not register, and why
    instances     InstanceStore     service instances: registered on the agent, read from the catalog
    proxies       ProxyStore        what each proxy serves; daemons' own registrations
    locks         LockStore         sessions and the leader lock
    certificates  CertificateStore  TLS certificates every proxy serves, and their keys

`Stores` holds one of each over one client; a part takes the bundle or only the stores it needs.
Callers get and give the dataclasses of `catalog.model`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..consul_client import ConsulClient, Tls
from .analysis import AnalysisStore
from .certificates import CertificateStore
from .healing import HealingStore
from .history import HistoryStore
from .instances import InstanceStore
from .locks import LockStore
from .node_records import NodeRecordStore
from .policies import PolicyStore
from .proxies import ProxyStore
from .rejections import RejectionStore
from .scaling import ScalingStore
from .verdicts import VerdictStore

__all__ = ["Stores", "AnalysisStore", "CertificateStore", "HealingStore", "HistoryStore", "InstanceStore", "LockStore",
           "NodeRecordStore", "PolicyStore", "ProxyStore", "RejectionStore", "ScalingStore", "VerdictStore"]


@dataclass(frozen=True)
class Stores:
    consul: ConsulClient
    verdicts: VerdictStore
    policies: PolicyStore
    history: HistoryStore
    analysis: AnalysisStore
    scaling: ScalingStore
    healing: HealingStore
    node_records: NodeRecordStore
    rejections: RejectionStore
    instances: InstanceStore
    proxies: ProxyStore
    locks: LockStore
    certificates: CertificateStore

    @classmethod
    def over(cls, consul: ConsulClient) -> "Stores":
        return cls(consul, VerdictStore(consul), PolicyStore(consul), HistoryStore(consul), AnalysisStore(consul),
                   ScalingStore(consul), HealingStore(consul), NodeRecordStore(consul), RejectionStore(consul),
                   InstanceStore(consul), ProxyStore(consul), LockStore(consul), CertificateStore(consul))

    @classmethod
    def connect(cls, address: str = "127.0.0.1:8500", token: Optional[str] = None, timeout: float = 5.0,
                max_wait: float = 30.0, tls: Optional[Tls] = None) -> "Stores":
        return cls.over(ConsulClient(address, token=token, timeout=timeout, max_wait=max_wait, tls=tls))

    def forget_instance(self, instance_id: str) -> None:
        """Everything gatekeeper kept of an instance long gone: its verdict, its gate record and
        any container action asked for it."""
        self.forget_instances([instance_id])

    def forget_instances(self, instance_ids) -> None:
        """forget_instance for many at once (a fleet torn down is forgotten in one sweep)."""
        if not instance_ids:
            return
        for iid in instance_ids:
            self.verdicts.forget(iid)
        self.node_records.forget(*instance_ids)

    def forget_service(self, service: str) -> List[str]:
        """Everything gatekeeper kept of a service: its policy, default test image, analysis and
        scaling records and history; the keys removed."""
        return (self.policies.forget(service) + self.analysis.forget(service) + self.scaling.forget(service)
                + self.history.forget(service))

    @property
    def address(self) -> str:
        return self.consul.address
