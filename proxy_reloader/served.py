"""What this proxy's nginx serves, published in Consul per service, for `gatekeeper wait`.

Written only after nginx confirmed it (a pushed generation, or a reload's config version), and
only when a service's versions or weight change: {"stable": V, "canary": V, "weight": N}. A
thread of its own does the writing, so Consul's commit time never delays a push.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, List, Optional

from catalog.retry import TRANSIENT
from catalog.routing import Route

log = logging.getLogger(__name__)


def served_of(route: Route) -> dict:
    return {"stable": route.stable.version if route.stable else "",
            "canary": route.canary.version if route.canary else "",
            "weight": route.weight if route.canary else 0}


class ServedReports(threading.Thread):
    def __init__(self, write: Callable[[str, Optional[dict]], None]):
        super().__init__(name="served-reports", daemon=True)
        self.write = write
        self.want: Dict[str, dict] = {}
        self.done: Dict[str, dict] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def update(self, routes: List[Route]) -> None:
        with self.lock:
            self.want = {r.service: served_of(r) for r in routes}
        self.wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.wake.wait(timeout=1.0):
                continue
            self.wake.clear()
            with self.lock:
                want = dict(self.want)
            try:
                for service, served in want.items():
                    if self.done.get(service) != served:
                        self.write(service, served)
                        self.done[service] = served
                for service in [s for s in self.done if s not in want]:
                    self.write(service, None)
                    del self.done[service]
            except TRANSIENT as exc:
                log.warning("could not publish what nginx serves (%s); retrying in 1 s", exc)
                self.stopping.wait(1.0)
                self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
