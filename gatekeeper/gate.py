"""The gate: test every new instance once, and keep each gate check equal to its verdict.

Fail closed: an instance is admitted (gate check passing) only when a stored verdict for that
very container says its tests passed. A gate found passing without such a verdict is reset.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional

from catalog.consul_store import ConsulError
from catalog.model import PASSED, TESTING, Instance, RegisteredInstance, Verdict
from catalog.retry import TRANSIENT

from .tester import DockerTester

log = logging.getLogger(__name__)


def instance_url(inst: Instance) -> str:
    return f"http://{inst.address}:{inst.port}"


class Gate:
    def __init__(self, store, tester: DockerTester, parallel: int = 2,
                 on_admitted: Optional[Callable[[Instance], None]] = None):
        self.store, self.tester = store, tester
        self.on_admitted = on_admitted or (lambda inst: None)
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="test")
        self.testing: Dict[str, str] = {}        # instance id -> container id under test
        self.lock = threading.Lock()

    def reconcile(self) -> None:
        for instances in self.store.all_instances().values():
            for ri in instances:
                self._reconcile_one(ri)

    def _reconcile_one(self, ri: RegisteredInstance) -> None:
        inst = ri.instance
        with self.lock:
            if self.testing.get(inst.id) == inst.container_id:
                return
        verdict = self.store.verdict(inst.id)
        if verdict is None or not verdict.applies_to(inst) or not verdict.final:
            if inst.docker_health and ri.checks.get(inst.docker_health_check_id) != "passing":
                log.debug("%s: waiting for Docker to report the container healthy before testing", inst.id)
                return
            self._start_test(inst)             # new, replaced, or interrupted mid-test
            return
        passing = verdict.state == PASSED
        if passing and ri.gate_status != "passing":
            log.info("%s: re-applying stored verdict (passed: %s)", inst.id, verdict.summary)
            self.store.set_gate(inst, True, verdict.summary)
        elif not passing and ri.gate_status == "passing":
            log.warning("%s: gate was passing against a %s verdict; closing it", inst.id, verdict.state)
            self.store.set_gate(inst, False, f"{verdict.state}: {verdict.summary}")

    def _start_test(self, inst: Instance) -> None:
        with self.lock:
            self.testing[inst.id] = inst.container_id
        self.pool.submit(self._test, inst)

    def _test(self, inst: Instance) -> None:
        try:
            log.info("%s: testing %s %s with %s against %s", inst.id, inst.service, inst.version,
                     inst.tests_image or "(none)", instance_url(inst))
            self.store.put_verdict(Verdict(inst.id, inst.container_id, inst.tests_image, TESTING,
                                           f"testing with {inst.tests_image}"))
            self.store.set_gate(inst, False, f"testing with {inst.tests_image or '(no tests image)'}")
            res = self.tester.run(inst.tests_image, instance_url(inst), inst.id)
            verdict = Verdict(inst.id, inst.container_id, inst.tests_image, res.state, res.summary,
                              res.started, res.finished, res.log_tail)
            self.store.put_verdict(verdict)
            passed = res.state == PASSED
            self.store.set_gate(inst, passed, res.summary if passed else f"{res.state}: {res.summary}")
            log.info("%s: %s (%s) in %.1f s", inst.id, res.state, res.summary, verdict.duration)
            if passed:
                self.on_admitted(inst)
        except ConsulError as exc:
            log.warning("%s: could not record the verdict (%s); the instance is probably gone", inst.id, exc)
        except TRANSIENT as exc:
            log.warning("%s: Consul unreachable while testing (%s); will test again", inst.id, exc)
        except Exception:                           # a bug must not kill the worker silently
            log.exception("%s: test run failed unexpectedly", inst.id)
        finally:
            with self.lock:
                self.testing.pop(inst.id, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
