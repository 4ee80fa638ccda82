"""Runs a service's integration-test image against one instance, boxed in and time-limited."""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Optional

import docker
import docker.errors
import requests

from catalog.model import ERROR, FAILED, PASSED

from .. import TEST_LABEL, TEST_LABEL_VALUE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLimits:
    timeout: float = 120.0
    memory: str = "256m"
    cpus: float = 1.0
    pids: int = 128


@dataclass(frozen=True)
class RunResult:
    state: str          # passed | failed | error
    summary: str        # one line, shown as the gate check's output
    log_tail: str
    started: float
    finished: float
    aborted: bool = False        # killed because this daemon stopped leading


def last_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""


class DockerTester:
    def __init__(self, client: Optional[docker.DockerClient] = None, limits: RunLimits = RunLimits(),
                 labels: Optional[dict] = None):
        self.client = client or docker.from_env(timeout=30)
        self.limits = limits
        self.labels = dict(labels or {})
        self.running: dict = {}                 # container id -> instance id
        self.aborted: set = set()               # container ids killed by abort_all
        self.lock = threading.Lock()
        # Finished test containers are removed off the gate's path: the verdict and the gate do
        # not wait for `docker rm`. close() waits for the removals still queued.
        self.reaper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-reaper")

    def remove_leftovers(self, instance_id: str) -> None:
        """Remove test containers for this instance that a dead daemon left running."""
        for c in self.client.containers.list(all=True, filters={
                "label": [f"{TEST_LABEL}={TEST_LABEL_VALUE}", f"proxystack.instance={instance_id[:200]}"]}):
            if c.id not in self.running:
                log.warning("%s: removing leftover test container %s", instance_id, c.short_id)
                c.remove(force=True)

    def abort_all(self) -> None:
        with self.lock:
            ids = list(self.running)
            self.aborted.update(ids)
        for cid in ids:
            try:
                self.client.containers.get(cid).kill()
            except docker.errors.APIError:
                pass                    # gone already
            except requests.RequestException as exc:
                # the engine is away: its test containers go with it, or are removed as leftovers
                log.warning("could not stop test container %s (%s); it is removed as a leftover later", cid[:12], exc)

    def run(self, image: str, url: str, instance_id: str) -> RunResult:
        started = time.time()

        def result(state: str, summary: str, logs: str = "") -> RunResult:
            return RunResult(state, summary, logs[-4000:], started, time.time())

        if not image:
            return result(ERROR, "no integration tests: the container has no gatekeeper.tests label")
        if not self._have_image(image):
            return result(ERROR, f"test image {image} is not on this engine and could not be pulled")
        lim = self.limits
        try:
            container = self.client.containers.run(
                image, detach=True, environment={"URL": url}, network_mode="host",
                mem_limit=lim.memory, memswap_limit=lim.memory, nano_cpus=int(lim.cpus * 1e9),
                pids_limit=lim.pids, read_only=True, tmpfs={"/tmp": "size=16m"},
                cap_drop=["ALL"], security_opt=["no-new-privileges"],
                labels={**self.labels, TEST_LABEL: TEST_LABEL_VALUE, "proxystack.instance": instance_id[:200]})
        except docker.errors.APIError as exc:
            return result(ERROR, f"could not start test image {image}: {exc.explanation or exc}")
        with self.lock:
            self.running[container.id] = instance_id
        try:
            try:
                code = container.wait(timeout=lim.timeout)["StatusCode"]
            except (requests.ReadTimeout, requests.ConnectionError):
                container.kill()
                logs = container.logs().decode("utf-8", "replace")
                return result(ERROR, f"tests timed out after {lim.timeout:.0f} s"
                              + (f"; last output: {last_line(logs)}" if last_line(logs) else ""), logs)
            logs = container.logs().decode("utf-8", "replace")
            summary = last_line(logs) or "(no output)"
            if container.id in self.aborted:
                return replace(result(ERROR, "aborted: this gatekeeper stopped leading", logs), aborted=True)
            if code == 0:
                return result(PASSED, summary, logs)
            if code == 137:
                return result(ERROR, f"tests were killed (exit 137: out of memory?); {summary}", logs)
            return result(FAILED, f"{summary} (exit {code})", logs)
        finally:
            with self.lock:
                self.running.pop(container.id, None)
                self.aborted.discard(container.id)
            self.reaper.submit(self._remove, container)

    @staticmethod
    def _remove(container) -> None:
        try:
            container.remove(force=True)
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning("could not remove test container %s: %s", container.short_id, exc)

    def close(self) -> None:
        """Wait for the queued removals, so a stopping daemon leaves no test container behind."""
        self.reaper.shutdown(wait=True)

    def _have_image(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            pass
        try:
            self.client.images.pull(image)
            return True
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning("pull of %s failed: %s", image, exc)
            return False
