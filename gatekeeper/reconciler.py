"""The one shape of gatekeeper's work: a reconciler looks at one service's instances at a time.

The daemon reads the catalog once per pass, shows every reconciler the whole of it first
(`begin_pass`: what spans services, such as who holds which route), hands each service's
instances to every reconciler in turn (the gate first, so the others see its decisions of this
pass), then lets each finish the pass (work across services). New instances are also shown as
they arrive (`arrived`), before the next pass, so that a backlog's long passes do not hold them
up. `next_due` says when a reconciler wants a pass although nothing changed (a grace period
ends, an analysis step falls due).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

from catalog.model import RegisteredInstance
from catalog.retry import TRANSIENT

log = logging.getLogger(__name__)

Snapshot = Dict[str, List[RegisteredInstance]]


class Reconciler:
    def begin_pass(self, snapshot: Snapshot) -> None:
        """Before any service is reconciled: what this part needs to know across services."""

    def reconcile(self, service: str, instances: List[RegisteredInstance]) -> None:
        """Bring this service in line with what this part owns."""

    def end_pass(self, snapshot: Snapshot) -> None:
        """After every service was reconciled: work that spans services."""

    def arrived(self, service: str, instances: List[RegisteredInstance]) -> None:
        """Instances registered since the daemon last looked, shown before the next pass (on the
        daemon's watch thread): what cannot wait for a pass over the whole catalog."""

    def next_due(self) -> Optional[float]:
        """When the next decision falls due (time.monotonic), or None."""
        return None

    def leadership_lost(self) -> None:
        """Another gatekeeper may lead now: stop what must not run twice."""

    def shutdown(self) -> None:
        """The daemon stops."""


def run_pass(snapshot: Snapshot, reconcilers: Sequence[Reconciler]) -> None:
    """One pass. A reconciler that fails on one service (a bug, a record no code expected) is
    logged with its traceback and the pass goes on with the next: one service cannot stop the
    gate and the promotions of every other. Consul or Docker unreachable ends the pass (the
    daemon tries it again)."""
    for r in reconcilers:
        r.begin_pass(snapshot)
    for service, instances in snapshot.items():
        for r in reconcilers:
            try:
                r.reconcile(service, instances)
            except TRANSIENT:
                raise
            except Exception:
                log.exception("%s: %s failed on this service; the other services go on, and the next pass "
                              "tries it again", service, type(r).__name__)
    for r in reconcilers:
        r.end_pass(snapshot)


def next_due(reconcilers: Sequence[Reconciler]) -> Optional[float]:
    return min((d for d in (r.next_due() for r in reconcilers) if d is not None), default=None)
