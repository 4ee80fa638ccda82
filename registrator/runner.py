"""registrator's main loop: subscribe to events, then sync, then handle events and resync.

Events are read on a thread into a queue, so the ones that arrive while a sync runs wait their
turn instead of being lost. When the stream ends (dockerd restarted, say) the reader reconnects
with back-off and asks for a full sync, which also removes containers that died meanwhile.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from catalog.retry import TRANSIENT, backoff, is_transient

from . import metrics
from .bridge import Bridge
from .docker_source import DOCKER_ERRORS, ContainerEvent, DockerSource

log = logging.getLogger(__name__)

ADD_ACTIONS = {"start", "unpause"}
REMOVE_ACTIONS = {"die", "stop", "destroy", "pause"}
# docker stop sends kill (SIGTERM) first: leave traffic then, before the process exits.
STOP_SIGNALS = {"15", "9", "2", "3"}
_RESYNC = "resync"


@dataclass
class RunnerOptions:
    resync_every: float = 60.0
    cleanup_on_exit: bool = False


class Runner:
    def __init__(self, bridge: Bridge, docker: DockerSource, options: RunnerOptions):
        self.bridge, self.docker, self.options = bridge, docker, options
        self.followers = []                # GateMirror, ActionRunner: applied again after each sync
        self.events: "queue.Queue" = queue.Queue()
        self.stopping = threading.Event()

    # --- event reader thread --------------------------------------------------------------
    def _read_events(self, first_ready: threading.Event) -> None:
        first = True
        while not self.stopping.is_set():
            ready = first_ready if first else threading.Event()
            try:
                self.docker.stream_events(self.events.put, ready, self.stopping)
                if not self.stopping.is_set():
                    log.warning("Docker event stream ended; reconnecting")
            except DOCKER_ERRORS as exc:
                log.warning("Docker event stream failed: %s; reconnecting", exc)
            if self.stopping.is_set():
                return
            self._wait_for_docker()
            first = False
            self.events.put(_RESYNC)      # containers may have changed while we were away

    @backoff(max_wait=10.0, on=DOCKER_ERRORS, what="Docker ping")
    def _wait_for_docker(self) -> None:
        if self.stopping.is_set():
            return
        self.docker.ping()

    # --- main loop ----------------------------------------------------------------------
    def run(self) -> None:
        ready = threading.Event()
        reader = threading.Thread(target=self._read_events, args=(ready,), name="docker-events", daemon=True)
        reader.start()
        ready.wait()                       # subscribed first ...
        self._sync()                       # ... then list and sync ...
        next_resync = time.monotonic() + self.options.resync_every
        while not self.stopping.is_set():  # ... then events, and a periodic resync
            timeout = max(0.0, next_resync - time.monotonic())
            try:
                item = self.events.get(timeout=min(timeout, 1.0))
            except queue.Empty:
                if self.bridge.gone_since:
                    self._retrying(self.bridge.tick)
                if time.monotonic() >= next_resync:
                    self._sync()
                    next_resync = time.monotonic() + self.options.resync_every
                continue
            if item == _RESYNC:
                self._sync()
                next_resync = time.monotonic() + self.options.resync_every
            else:
                self._handle(item)
        if self.options.cleanup_on_exit:
            self._cleanup()

    @backoff(max_wait=2.0, attempts=5, what="deregistration on exit")
    def _cleanup(self) -> None:
        for iid in list(self.bridge.known):
            self.bridge.instances.deregister(iid)
            self.bridge.known.pop(iid)
            log.info("deregistered %s on exit (--cleanup-on-exit)", iid)

    def stop(self) -> None:
        self.stopping.set()

    def _handle(self, ev: ContainerEvent) -> None:
        metrics.EVENTS.labels(ev.action).inc()
        if ev.action in ADD_ACTIONS:
            self._retrying(self.bridge.add, ev.container_id)
        elif ev.action == "rename":
            # ids carry the container name: drop the old ones, register under the new name
            self._retrying(self.bridge.remove, ev.container_id, "renamed")
            self._retrying(self.bridge.add, ev.container_id)
        elif ev.action == "health_status":
            self._retrying(self.bridge.health_changed, ev.container_id, ev.detail)
        elif ev.action in REMOVE_ACTIONS or (ev.action == "kill" and ev.attributes.get("signal") in STOP_SIGNALS):
            self._retrying(self.bridge.remove, ev.container_id, ev.action)

    def _sync(self) -> None:
        self._retrying(self.bridge.sync)
        for follower in self.followers:
            self._retrying(follower.apply)

    def _retrying(self, fn, *args) -> None:
        """Consul or Docker unreachable: retry with back-off until it answers (or we stop).
        After an outage, a full resync follows: a restarted agent may have lost registrations."""
        failures = 0

        @backoff(max_wait=10.0, on=DOCKER_ERRORS, what=getattr(fn, "__name__", "call"))
        def attempt():
            nonlocal failures
            if not self.stopping.is_set():
                try:
                    fn(*args)
                except TRANSIENT + DOCKER_ERRORS as exc:
                    if is_transient(exc) or isinstance(exc, DOCKER_ERRORS):
                        failures += 1
                        metrics.RETRIES.inc()
                    raise
        try:
            attempt()
        except TRANSIENT as exc:            # a 4xx: Consul refuses this; retrying will not help
            log.error("%s refused by Consul: %s", getattr(fn, "__name__", "call"), exc)
            return
        if failures and fn != self.bridge.sync:
            log.info("recovered after %d failed attempt(s); resyncing", failures)
            self.events.put(_RESYNC)
