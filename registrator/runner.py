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

from catalog.consul_client import ACLPermissionDenied, TokenFile
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
_REGISTER_AGAIN = "register again"      # a new token: every instance registered again with it


@dataclass
class RunnerOptions:
    resync_every: float = 60.0
    cleanup_on_exit: bool = False
    # How often registrator asks Consul whether its token still holds: the agent answers
    # registrations from its ACL cache for a while after a revocation, and only the servers'
    # sync (which registrator does not see) would fail.
    token_check_every: float = 5.0


class Runner:
    def __init__(self, bridge: Bridge, docker: DockerSource, options: RunnerOptions):
        self.bridge, self.docker, self.options = bridge, docker, options
        self.followers = []                # GateMirror, ActionRunner, MarkerMirror: applied again after each sync
        self.events: "queue.Queue" = queue.Queue()
        self.stopping = threading.Event()
        self.token_file: "TokenFile | None" = None   # read again when Consul refuses the token
        self.refused = False

    # --- event reader thread --------------------------------------------------------------
    def _read_events(self, first_ready: threading.Event) -> None:
        while not self.stopping.is_set():
            # until a first subscription holds, each try may be the first (run() waits for it)
            ready = threading.Event() if first_ready.is_set() else first_ready
            try:
                self.docker.stream_events(self.events.put, ready, self.stopping)
                if not self.stopping.is_set():
                    log.warning("Docker event stream ended; reconnecting")
            except DOCKER_ERRORS as exc:
                log.warning("Docker event stream failed: %s; reconnecting", exc)
            if self.stopping.is_set():
                return
            self._wait_for_docker()
            if first_ready.is_set():
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
        while not ready.wait(0.5):         # subscribed first ...
            if self.stopping.is_set():
                return
        self._sync()                       # ... then list and sync ...
        next_resync = time.monotonic() + self.options.resync_every
        next_token_check = time.monotonic() + self.options.token_check_every
        while not self.stopping.is_set():  # ... then events, and a periodic resync
            timeout = max(0.0, min(next_resync, next_token_check) - time.monotonic())
            try:
                item = self.events.get(timeout=min(timeout, 1.0))
            except queue.Empty:
                item = None
            if time.monotonic() >= next_token_check:      # between events too: a busy host still asks
                self._check_token()
                next_token_check = time.monotonic() + self.options.token_check_every
            if item is None:
                if self.bridge.gone_since:
                    self._retrying(self.bridge.tick)
                if time.monotonic() >= next_resync:
                    self._sync()
                    next_resync = time.monotonic() + self.options.resync_every
                continue
            if item == _RESYNC:
                self._sync()
                next_resync = time.monotonic() + self.options.resync_every
            elif item == _REGISTER_AGAIN:
                self._sync(again=True)
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

    def _check_token(self) -> None:
        """Ask Consul's servers whether registrator's token still holds."""
        if self.token_file is None:
            return
        try:
            self.token_file.client.token_self()
        except ACLPermissionDenied as exc:
            self._token_refused(exc)
        except TRANSIENT:
            return                           # unreachable: the calls' own retries say so
        else:
            self._token_accepted()

    def _token_accepted(self) -> None:
        if self.refused:
            self.refused = False
            metrics.TOKEN_REFUSED.set(0)
            log.warning("Consul accepts registrator's token again")

    def _token_refused(self, exc: Exception) -> None:
        """Consul refused the token: said once per refusal (the retries say the rest), and the token
        file read again, so that a new token written there is used from the next attempt, and
        every instance registered again with it."""
        where = self.token_file.path if self.token_file and self.token_file.path else None
        if self.token_file and self.token_file.refresh():
            log.warning("Consul refused registrator's token (%s); a new one is in %s: using it and "
                        "registering this host's instances again with it", exc, where)
            self.events.put(_REGISTER_AGAIN)
            return
        if not self.refused:
            self.refused = True
            metrics.TOKEN_REFUSED.set(1)
            log.error("Consul refuses registrator's token (%s): revoked, or without the rights it needs. This "
                      "host's containers are neither registered nor removed until it is restored: %s. "
                      "Events are kept and retried; nothing is lost.", exc,
                      f"write a valid token to {where} (read again at each attempt)" if where
                      else "restart registrator with a valid token")

    def _sync(self, again: bool = False) -> None:
        self._retrying(self.bridge.sync, *((True,) if again else ()))
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
                    if isinstance(exc, ACLPermissionDenied):
                        self._token_refused(exc)
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
