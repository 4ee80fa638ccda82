"""The gate: test every new instance once, and keep each gate check equal to its verdict.

Fail closed: an instance is admitted (gate check passing) only when a stored verdict for that
very container says its tests passed. A gate found passing without such a verdict is reset.
An instance whose route (host name and path) another service serves is not tested: its gate
stays shut with the reason until that route is free.

Verdicts of instances that left the catalog are kept `forget_after` seconds (a registrator or
agent restart re-registers the same container, which must not be tested again), then removed.

Built for thousands of instances: a pass reads every verdict at once, not one per instance; the
gates it corrects are written together (a few Consul transactions) at the end of the pass; and
the test queue takes the instance seen last first, so a container started during a backlog
(thousands of instances imported at once) is tested at once, not after all of them; and the
daemon shows it to the gate as it arrives (`arrived`), so it does not wait for the pass under way.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple

from catalog.consul_client import ConsulError
from catalog.model import ERROR, OTHER_OWNER, PASSED, ROUTE_TAKEN, TESTING, Instance, RegisteredInstance, Verdict
from catalog.routing import route_keys
from catalog.retry import TRANSIENT
from catalog.stores import Stores

from .. import metrics
from ..reconciler import Reconciler, Snapshot
from .queue import FIRST, REVERIFY, NewestFirst
from .tester import DockerTester

log = logging.getLogger(__name__)


REWRITE_BACKOFF = 5.0          # seconds before a disagreeing gate's decision is written again; doubling
REWRITE_BACKOFF_MAX = 60.0
FIRST_SEEN_KEPT = 600.0        # seconds an instance missing from a snapshot keeps its first-seen time


def instance_url(inst: Instance) -> str:
    return f"http://{inst.address}:{inst.port}"


class Gate(Reconciler):
    """Per service: test what has no verdict for its container, keep gates equal to verdicts.
    At the end of a pass: retests asked for, re-verifications due, verdicts of instances long
    gone. `on_admitted` hears of each first pass (the promoter acts on it at once)."""

    def __init__(self, stores: Stores, tester: DockerTester, parallel: int = 2,
                 on_admitted: Optional[Callable[[Instance], None]] = None,
                 reverify_every: float = 0.0,
                 forget_after: float = 900.0, clock: Callable[[], float] = time.monotonic):
        self.stores, self.tester = stores, tester
        self.on_admitted = on_admitted or (lambda inst: None)
        self.reverify_every = reverify_every
        self.pool = NewestFirst(parallel, "test")
        self.testing: Dict[str, str] = {}        # instance id -> container id under test
        self.lock = threading.Lock()
        self.forget_after, self.clock = forget_after, clock
        self.absent_since: Dict[str, float] = {}  # instance id with a verdict -> first seen unregistered
        self.first_seen: Dict[str, float] = {}    # instance id awaiting its first verdict -> when seen
        self.rewrites: Dict[str, Tuple[int, float]] = {}  # gate disagreeing with its verdict -> (rewrites, last)
        self.next_sweep = 0.0
        self.routes_taken: Dict[Tuple[str, str], str] = {}   # (host, path) -> the service serving it
        self.owners: Dict[str, Tuple[str, int]] = {}   # service -> (its Swarm service or "", admitted)
        self.verdicts: Dict[str, Verdict] = {}         # every stored verdict, read once per pass ...
        self.written: Dict[str, Tuple[float, Verdict]] = {}   # ... and those written since: (when, verdict)
        self.corrections: List[Tuple[Instance, bool, str]] = []   # gates to write at the pass's end
        self.passes = 0                                # passes since it leads (`arrived` waits for one)
        self.term = 0                                  # leaderships lost: a test queued before is not run

    def begin_pass(self, snapshot: Snapshot) -> None:
        """Every verdict, in one read. Who serves which route (host name and path) now: a
        service's admitted instances hold theirs; two at one route, the first by name (as the
        proxy keeps it). And who runs each service: a Swarm service or plain containers, by its
        admitted instances (both: Swarm)."""
        read_at = time.monotonic()
        verdicts = self.stores.verdicts.all()
        with self.lock:
            # a verdict a test wrote once the read had begun may be missing from it: kept from here
            # (one written before, the read has, or a newer one another writer put since)
            verdicts.update({iid: v for iid, (when, v) in self.written.items() if when >= read_at})
            self.written = {iid: w for iid, w in self.written.items() if w[0] >= read_at}
            self.verdicts = verdicts
        taken: Dict[Tuple[str, str], str] = {}
        owners: Dict[str, Tuple[str, int]] = {}
        for service in sorted(snapshot):
            admitted = [ri.instance for ri in snapshot[service] if ri.admitted]
            for inst in admitted:
                for key in route_keys(inst):
                    taken.setdefault(key, service)
            if admitted:
                swarm = sorted({i.swarm_service for i in admitted if i.swarm_service})
                owner = swarm[0] if swarm else ""
                owners[service] = (owner, sum(1 for i in admitted if i.swarm_service == owner))
        self.routes_taken = taken
        self.owners = owners

    def run_by_other(self, inst: Instance) -> Optional[str]:
        """Why this instance may not join its service, when the service is run the other way: by
        a Swarm service (and this is a plain container or another Swarm service's task), or by
        plain containers (and this is a Swarm task). One owner per service: mixed, a promotion of
        one kind would drain the other, which (Swarm) would replace what was drained."""
        owner, count = self.owners.get(inst.service, (None, 0))
        if owner is None or owner == inst.swarm_service:
            return None
        if owner:
            return (f"{OTHER_OWNER}service {inst.service} is run by Swarm service {owner}; deploy new versions "
                    f"with `docker service update --image IMAGE {owner}`, or remove that Swarm service first")
        return (f"{OTHER_OWNER}service {inst.service} is run by plain containers ({count} admitted); remove them "
                f"first, or give Swarm service {inst.swarm_service} another SERVICE_NAME")

    def taken_by(self, inst: Instance) -> Optional[Tuple[str, str]]:
        """(where, which service) when another service serves a route this instance claims."""
        for key in route_keys(inst):
            owner = self.routes_taken.get(key)
            if owner and owner != inst.service:
                return f"{key[0]}{key[1]}" if key[0] else f"path {key[1]}", owner
        return None

    def reconcile(self, service: str, instances: List[RegisteredInstance]) -> None:
        for ri in instances:
            self._reconcile_one(ri)

    def arrived(self, service: str, instances: List[RegisteredInstance]) -> None:
        """Instances registered since the daemon last looked, before a pass reaches them: one with
        no verdict for its container is tested now, whatever the pass under way still has to do
        (a pass over 10,000 instances takes more than a second). Only what the pass would do
        for it too, and only once a pass has read the verdicts; the rest waits for the pass."""
        if not self.passes:
            return
        for ri in instances:
            verdict = self._verdict(ri.instance.id)
            if verdict is None or not verdict.applies_to(ri.instance):
                self._first_test(ri)

    def end_pass(self, snapshot: Snapshot) -> None:
        self.passes += 1
        corrections, self.corrections = self.corrections, []
        if corrections:
            self.stores.node_records.set_gates(corrections)
        by_id = {ri.instance.id: ri for instances in snapshot.values() for ri in instances}
        for iid in self.stores.verdicts.retests():
            ri = by_id.get(iid)
            if ri is None:
                self.stores.verdicts.clear_retest(iid)          # the instance is gone
            elif not self._busy(ri.instance):
                log.info("%s: retest requested", iid)
                self._start_test(ri.instance, reverify=True)
        # Forget when an instance was first seen once it is gone, but not one that arrived after
        # this pass's snapshot was read (the daemon's look at new instances tests it meanwhile):
        # its gate-open time would be lost.
        recent = time.monotonic() - FIRST_SEEN_KEPT
        with self.lock:
            self.first_seen = {iid: t for iid, t in self.first_seen.items()
                               if iid in by_id or iid in self.testing or t > recent}
        self.rewrites = {iid: r for iid, r in self.rewrites.items() if iid in by_id}
        if self.reverify_every > 0:
            self._reverify_due(by_id.values())
        self._forget_gone_verdicts(by_id)

    def _forget_gone_verdicts(self, registered: Dict[str, RegisteredInstance]) -> None:
        now = self.clock()
        if now < self.next_sweep:
            return
        self.next_sweep = now + min(30.0, max(self.forget_after / 4, 0.5))
        absent = set(self.stores.verdicts.ids()) - set(registered)   # unreadable ones too
        self.absent_since = {iid: self.absent_since.get(iid, now) for iid in absent}
        gone = {iid: since for iid, since in self.absent_since.items()
                if now - since >= self.forget_after and not self._busy_id(iid)}
        self.stores.forget_instances(list(gone))
        for iid, since in gone.items():
            del self.absent_since[iid]
            log.info("%s: verdict removed; the instance has been gone for %.0f s", iid, now - since)
        # actions asked for containers already gone when their verdict went (a drained one
        # removed versions later) are not forgotten with it
        for key in self.stores.node_records.forget_old_actions(registered, self.forget_after):
            log.info("%s: container action removed: asked over %.0f s ago for an instance no longer registered",
                     key, self.forget_after)

    def _reverify_due(self, registered) -> None:
        now = time.time()
        for ri in registered:
            if not ri.admitted or self._busy(ri.instance):
                continue
            verdict = self._verdict(ri.instance.id)
            if verdict and verdict.state == PASSED and now - verdict.finished >= self.reverify_every:
                log.info("%s: re-verifying (last passed %.0f s ago)", ri.instance.id, now - verdict.finished)
                self._start_test(ri.instance, reverify=True)

    def _verdict(self, instance_id: str) -> Optional[Verdict]:
        with self.lock:
            return self.verdicts.get(instance_id)

    def _put_verdict(self, verdict: Verdict, cas: Optional[int] = None) -> bool:
        if self.stores.verdicts.put(verdict, cas=cas) is False:
            return False
        with self.lock:
            self.verdicts[verdict.instance_id] = verdict
            self.written[verdict.instance_id] = (time.monotonic(), verdict)
        return True

    def _busy(self, inst: Instance) -> bool:
        return self._busy_id(inst.id)

    def _busy_id(self, instance_id: str) -> bool:
        with self.lock:
            return instance_id in self.testing

    def _reconcile_one(self, ri: RegisteredInstance) -> None:
        inst = ri.instance
        with self.lock:
            if self.testing.get(inst.id) == inst.container_id:
                return
        verdict = self._verdict(inst.id)
        if (verdict is None or not verdict.applies_to(inst) or not verdict.final or self._image_now_known(inst, verdict)
                or (verdict.route_taken and self.taken_by(inst) is None)
                or (verdict.other_owner and self.run_by_other(inst) is None)):
            self._first_test(ri)                   # new, replaced, or interrupted mid-test
            return
        passing = verdict.state == PASSED
        if passing and ri.gate_status != "passing" and self._healing_gave_up(ri):
            return
        if passing and verdict.promotion_pending and ri.admitted:
            log.info("%s: making the promotion its first pass was cut short of", inst.id)
            try:
                self._promote(inst, verdict)
            except (ConsulError, *TRANSIENT) as exc:
                log.warning("%s: promotion not made (%s); the next pass tries again", inst.id, exc)
        if passing == (ri.gate_status == "passing"):
            self.rewrites.pop(inst.id, None)      # the gate agrees: a disagreement is answered at once again
        elif not self._rewrite_due(inst.id):
            return
        elif passing:
            log.info("%s: re-applying stored verdict (passed: %s)", inst.id, verdict.summary)
            self.corrections.append((inst, True, verdict.summary))
        else:
            log.warning("%s: gate was passing against a %s verdict; closing it", inst.id, verdict.state)
            self.corrections.append((inst, False, f"{verdict.state}: {verdict.summary}"))

    def _first_test(self, ri: RegisteredInstance) -> None:
        """An instance awaiting its verdict: tested, once Docker says it is healthy if it has a
        healthcheck."""
        inst = ri.instance
        with self.lock:
            self.first_seen.setdefault(inst.id, time.monotonic())
        if inst.docker_health and ri.checks.get(inst.docker_health_check_id) != "passing":
            log.debug("%s: waiting for Docker to report the container healthy before testing", inst.id)
            return
        self._start_test(inst)

    def _rewrite_due(self, instance_id: str) -> bool:
        """A gate that disagrees with its verdict gets the decision written again at once (a forged
        gate is shut within the second), then after 5, 10, 20, 40, 60, 60... s while it still
        disagrees: its host's registrator applies every record it reads, so writing again only
        helps once it is back, and a host whose registrator is down is not written to every pass."""
        now = self.clock()
        count, last = self.rewrites.get(instance_id, (0, 0.0))
        if count and now - last < min(REWRITE_BACKOFF * 2 ** (count - 1), REWRITE_BACKOFF_MAX):
            return False
        self.rewrites[instance_id] = (count + 1, now)
        return True

    def _healing_gave_up(self, ri: RegisteredInstance) -> bool:
        """The healer gave up on this run of the container: its gate stays shut, saying why."""
        record = self.stores.healing.get(ri.instance.id)
        if not record or not record.get("gave_up"):
            return False
        if ri.gate_output != record.get("reason"):
            self.stores.node_records.set_gate(ri.instance, False, record.get("reason", "gave up healing"))
        return True

    def _image_now_known(self, inst: Instance, verdict: Verdict) -> bool:
        """An error verdict for want of a test image is stale once the service has a default one
        (`gatekeeper tests SERVICE IMAGE` after the instance was registered)."""
        return (verdict.lacked_test_image and not inst.tests_image
                and bool(self.stores.policies.tests_image(inst.service)))

    def _start_test(self, inst: Instance, reverify: bool = False) -> None:
        with self.lock:       # a pass and the daemon's look at new instances may both get here
            if self.testing.get(inst.id) == inst.container_id:
                return
            self.testing[inst.id] = inst.container_id
            term = self.term
        self.pool.submit(REVERIFY if reverify else FIRST, self._test, inst, reverify, term)

    def _may_record(self, inst: Instance, term: Optional[int]) -> bool:
        """Whether a test queued or running may still run and record (a verdict, a gate, a
        promotion): not once leadership was lost since it was queued (the next leader decides,
        and no instance is tested by two daemons at once), nor once another container took the
        instance's name (compose recreating it, `docker rm -f` and `run`): that one's test owns
        the instance's records now."""
        with self.lock:
            lost = term is not None and term != self.term
            replaced = self.testing.get(inst.id) != inst.container_id
        if lost:
            log.info("%s: not tested or recorded here: leadership was lost since it was queued", inst.id)
        elif replaced:
            log.info("%s: container %s replaced by another of the same name: its test records nothing",
                     inst.id, inst.container_id[:12])
        return not (lost or replaced)

    def _test(self, inst: Instance, reverify: bool = False, term: Optional[int] = None) -> None:
        """Test one instance. A first test closes the gate while it runs; a re-verification of
        a live instance leaves it serving until a failure takes it out."""
        try:
            if not self._may_record(inst, term):
                return
            image = inst.tests_image or self.stores.policies.tests_image(inst.service)
            log.info("%s: %s %s %s with %s against %s", inst.id, "re-verifying" if reverify else "testing",
                     inst.service, inst.version, image or "(none)", instance_url(inst))
            self.tester.remove_leftovers(inst.id)     # a dead leader's run must not overlap ours
            # what this run answers: the retest asked now (one asked while it runs is run after
            # it), and the verdict now (one written while it runs, by `gatekeeper admit` say, is
            # kept: the run records nothing over it)
            asked = self.stores.verdicts.retest_asked(inst.id) if reverify else 0
            index, before = self.stores.verdicts.get_indexed(inst.id)
            if not reverify and before is not None and before.applies_to(inst) and before.state == PASSED:
                log.info("%s: passed already (%s); not tested now", inst.id, before.summary)
                return                            # `gatekeeper admit` while it waited in the queue
            # A first pass of this container may change routing; a re-verification of one that
            # passed before may not (an old version kept for rollback must not be promoted again),
            # nor a new run of a container that passed before (restarted by its restart policy,
            # when its engine restarted, or by the healer): an old version kept running must not
            # take production back because its host rebooted. (A promotion still to be made is.)
            passed_before = before is not None and before.container_id == inst.container_id and before.state == PASSED
            first_pass = not passed_before or before.promotion_pending
            # Whether its route is free and its service run its way is asked of every run not yet
            # admitted, retested or not: a retest must not let in what the gate refused, nor a
            # restart a container whose route another service took meanwhile.
            checked = not (before is not None and before.applies_to(inst) and before.state == PASSED)
            taken = self.taken_by(inst) if checked else None
            if taken:
                where, owner = taken
                self._refuse(inst, image, f"{ROUTE_TAKEN}{where} is already routed to service {owner}; give this "
                                          f"container another proxy.path or proxy.host, or remove {owner}'s instances",
                             asked)
                return
            other = self.run_by_other(inst) if checked else None
            if other:
                self._refuse(inst, image, other, asked)
                return
            if not reverify:
                testing = Verdict(inst.id, inst.container_id, image, TESTING, f"testing with {image}",
                                  container_started=inst.started)
                if not self._put_verdict(testing, cas=index):
                    log.warning("%s: a verdict was written for it meanwhile; not tested now", inst.id)
                    return
                index = self.stores.verdicts.get_indexed(inst.id)[0]
                self.stores.node_records.set_gate(inst, False, f"testing with {image or '(no tests image)'}")
            res = self.tester.run(image, instance_url(inst), inst.id)
            if res.aborted:
                log.warning("%s: test run aborted (leadership lost); the next leader tests again", inst.id)
                return
            if not self._may_record(inst, term):
                return
            passed = res.state == PASSED
            verdict = Verdict(inst.id, inst.container_id, image, res.state, res.summary,
                              res.started, res.finished, res.log_tail, container_started=inst.started,
                              promotion_pending=passed and first_pass)
            if not self._put_verdict(verdict, cas=index):
                log.warning("%s: its verdict was written while it was tested (`gatekeeper admit`, a restore): "
                            "that one is kept; this run (%s: %s) is not recorded", inst.id, res.state, res.summary)
                return
            self.stores.node_records.set_gate(inst, passed, res.summary if passed else f"{res.state}: {res.summary}")
            if asked:
                self.stores.verdicts.clear_retest(inst.id, cas=asked)
            log.info("%s: %s (%s) in %.1f s", inst.id, res.state, res.summary, verdict.duration)
            self._count(inst, verdict, reverify)
            if verdict.promotion_pending:
                self._promote(inst, verdict)
        except ConsulError as exc:
            log.warning("%s: could not record the verdict (%s); the instance is probably gone", inst.id, exc)
        except TRANSIENT as exc:
            log.warning("%s: Consul unreachable while testing (%s); will test again", inst.id, exc)
        except Exception:                           # a bug must not kill the worker silently
            log.exception("%s: test run failed unexpectedly", inst.id)
        finally:
            with self.lock:                       # its own mark only, not a successor's
                if self.testing.get(inst.id) == inst.container_id:
                    del self.testing[inst.id]

    def _promote(self, inst: Instance, verdict: Verdict) -> None:
        """A first pass's promotion (`on_admitted`), then the verdict saying it was made. Cut short
        (Consul without a leader, this daemon stopped or no longer leading), the verdict still
        says it is pending: the pass that finds the instance admitted makes it then."""
        self.on_admitted(inst)
        self._put_verdict(replace(verdict, promotion_pending=False))

    def _refuse(self, inst: Instance, image: str, summary: str, retest: int = 0) -> None:
        """Another service serves this instance's route, or its service is run the other way: its
        gate stays shut, saying so (in the Consul UI, `gatekeeper why` and status), and it is
        tested once that is no longer so. A retest asked for (`retest`: its index) is answered
        by the refusal."""
        now = time.time()
        self._put_verdict(Verdict(inst.id, inst.container_id, image, ERROR, summary, now, now,
                                  container_started=inst.started))
        self.stores.node_records.set_gate(inst, False, f"{ERROR}: {summary}")
        if retest:
            self.stores.verdicts.clear_retest(inst.id, cas=retest)
        log.warning("%s: not tested: %s", inst.id, summary)

    def _count(self, inst: Instance, verdict: Verdict, reverify: bool) -> None:
        metrics.TEST_RUNS.labels(inst.service, verdict.state).inc()
        metrics.TEST_SECONDS.labels(inst.service).observe(verdict.duration)
        with self.lock:
            seen = self.first_seen.pop(inst.id, None)
        if seen is not None and not reverify and verdict.state == PASSED:
            metrics.GATE_SECONDS.labels(inst.service).observe(time.monotonic() - seen)

    def leadership_lost(self) -> None:
        """Stop every running test at once, and drop those queued (the next leader retests)."""
        with self.lock:
            self.term += 1
        self.passes = 0
        self.tester.abort_all()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False)
        self.tester.abort_all()
        self.tester.close()
