"""Routing-policy changes: automatic promotion after a pass, promote, and draining old versions.

Policies live in Consul KV and are written with check-and-set, so two writers (the daemon and
an operator, or two operators) never silently overwrite each other.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, replace
from typing import Callable, Optional, Tuple

from catalog.errors import Refused
from catalog.kv_layout import POLICIES
from catalog.model import (AUTO, MANUAL, MODES, PASSED, PROGRESSIVE, Instance, RollbackRequest, RoutingPolicy,
                           containers_in_words)
from catalog.retry import TRANSIENT
from catalog.stores import InstanceStore, PolicyStore, Stores
from catalog.validation import InvalidValue, parse_analysis_label, validate_analysis

from .. import metrics
from ..reconciler import Reconciler
from .progressive import Progressive
from ..prometheus import Prometheus

log = logging.getLogger(__name__)


class PromotionError(Refused):
    """A promotion request that cannot be carried out; the message says why and what to do."""


class Conflict(PromotionError):
    pass


def update_policy(policies: PolicyStore, service: str, change: Callable[[RoutingPolicy], Optional[RoutingPolicy]],
                  attempts: int = 5) -> Optional[RoutingPolicy]:
    """Read-modify-write with check-and-set; `change` returns None for "nothing to do"."""
    for _ in range(attempts):
        cas, current = policies.get(service)
        new = change(current or RoutingPolicy(service=service))
        if new is None:
            return current
        new = replace(new, updated=time.time())
        if policies.put(new, cas):
            return new
    raise Conflict(f"the routing policy of {service} kept changing under us; try again")


class Promoter(Reconciler):
    """Acts on admitted instances: auto mode makes a passed version stable and drains the rest;
    manual mode makes it the canary at 0 %; progressive mode makes it the canary at the first
    step and lets the analysis (`progressive`) move it on."""

    def __init__(self, stores: Stores, drain_seconds: float = 10.0, stop_old: bool = True,
                 unhealthy_grace: float = 10.0, prometheus: Optional[Prometheus] = None, keep_versions: int = 3,
                 confirm_timeout: float = 300.0):
        self.stores = stores
        self.progressive = Progressive(stores, prometheus, self._analysis_weight, self._analysis_promote,
                                       self._analysis_roll_back)
        self.unhealthy_grace = unhealthy_grace
        self.unhealthy_since: dict = {}          # service -> when its canary was first seen unhealthy
        self.drain_seconds = drain_seconds
        self.confirm_timeout = confirm_timeout   # how long a drain waits for every proxy to serve the new version
        self.stop_old = stop_old
        self.keep_versions = keep_versions       # drained versions whose stopped containers are kept
        self.rollback_due: dict = {}            # service -> when its waiting rollback is given up

    def admitted(self, inst: Instance) -> None:
        # Tests finish on worker threads while the daemon's thread runs the analysis: a canary
        # and its analysis are set together, never seen half-made by a step.
        with self.progressive.lock:
            self._admitted(inst)

    def _admitted(self, inst: Instance) -> None:
        try:
            before = self.stores.policies.get(inst.service)[1]
        except InvalidValue as exc:
            log.error("%s: routing policy is invalid (%s); not promoting until it is fixed", inst.service, exc)
            return
        if self._finish_rollback(inst.service, inst.version):
            return
        if self._drained_came_back(inst, before):
            return
        mode = before.mode if before else AUTO
        labelled = _labelled(inst)
        registered = self.stores.instances.of(inst.service) if inst.swarm_service else []

        def change(p: RoutingPolicy) -> Optional[RoutingPolicy]:
            told = labelled(p)                     # the container's gatekeeper.mode/analysis labels
            if p.stable == inst.version or p.canary == inst.version:
                return told if told != p else None
            p = told
            if p.mode == MANUAL and p.stable:
                return p.with_canary(inst.version)
            if p.mode == PROGRESSIVE and p.stable:
                return replace(p.with_canary(inst.version), weight=min(p.analysis.step, p.analysis.max_weight))
            share = task_share(registered, inst, p.stable) if p.mode == AUTO and p.stable else None
            if share is not None:
                return replace(p.with_canary(inst.version), weight=share)
            return p.promoted(inst.version)

        after = update_policy(self.stores.policies, inst.service, change)
        if after is not None and (before is None or (before.mode, before.analysis) != (after.mode, after.analysis)) \
                and (inst.mode or inst.analysis):
            self.stores.history.add(inst.service, "mode", mode=after.mode, by=f"label on {inst.container_name}",
                                    **({"settings": asdict(after.analysis)} if after.mode == PROGRESSIVE else {}))
        mode = after.mode if after is not None else mode
        if after is None or (before and after.stable == before.stable and after.canary == before.canary):
            return
        if after.mode == PROGRESSIVE and after.canary == inst.version:
            self.stores.history.add(inst.service, "canary", version=inst.version, weight=after.weight,
                                    by="gatekeeper (progressive)")
            metrics.PROMOTIONS.labels(inst.service, "canary").inc()
            self.progressive.begin(inst.service, inst.version, after)
            return
        if after.mode == AUTO and after.canary == inst.version:
            log.info("%s: %s passed; Swarm's update goes on, and it takes %d%% of the traffic, its share of the "
                     "admitted tasks", inst.service, inst.version, after.weight)
            self.stores.history.add(inst.service, "canary", version=inst.version, weight=after.weight,
                                    by="gatekeeper (swarm update)")
            metrics.PROMOTIONS.labels(inst.service, "canary").inc()
            return
        if mode == MANUAL and before and before.stable:
            log.info("%s: %s passed and is now the canary (weight 0); `gatekeeper promote %s` to make it stable",
                     inst.service, inst.version, inst.service)
            self.stores.history.add(inst.service, "canary", version=inst.version, by="gatekeeper")
            metrics.PROMOTIONS.labels(inst.service, "canary").inc()
            return
        log.info("%s: %s passed and is now stable (was %s)", inst.service, inst.version,
                 before.stable if before and before.stable else "none")
        self._became_stable(inst.service, inst.version, before, "gatekeeper (auto)")

    def _drained_came_back(self, inst: Instance, policy: Optional[RoutingPolicy]) -> bool:
        """A container the drain stopped, started again by something else than a rollback: its
        restart policy `always` when its engine restarted (a host's reboot brings back every
        drained version kept), or `docker start`. Admitted, it is no promotion: an old version
        must not take production back by itself. The history says so, and how to use it."""
        if policy is None or inst.version in (policy.stable, policy.canary):
            return False
        drained = kept_drained(self.stores.history.of(inst.service)).get(inst.version, [])
        if not any(c.get("id") == inst.container_id for c in drained):
            return False
        how = (f"`gatekeeper rollback {inst.service}` makes it stable again" if inst.version == policy.previous else
               f"`gatekeeper canary {inst.service} {inst.version}`, then `promote`, sends it traffic")
        reason = (f"{inst.container_name} ({inst.version}), stopped by the drain, started again (its restart policy "
                  f"when its engine restarted, or by hand) and passed its tests: admitted, not routed; {how}")
        log.warning("%s: %s", inst.service, reason)
        self.stores.history.add(inst.service, "drained container back", version=inst.version, instance=inst.id,
                                by="gatekeeper", reason=reason[:300])
        return True

    def _became_stable(self, service: str, version: str, before: Optional[RoutingPolicy], by: str) -> None:
        """What follows every promotion by the daemon: the history, the count, the old drained."""
        self.stores.history.add(service, "promoted", version=version, previous=before.stable if before else "", by=by)
        metrics.PROMOTIONS.labels(service, "promoted").inc()
        self.drain_later(service, version)

    def next_due(self) -> Optional[float]:
        """When the next decision falls due (time.monotonic): the earliest unhealthy canary's
        grace period ends, a progressive analysis checks again, or a waiting rollback's deadline."""
        due = [min(self.unhealthy_since.values()) + self.unhealthy_grace] if self.unhealthy_since else []
        due += list(self.rollback_due.values())
        analysis_due = self.progressive.next_due()
        return min(due + ([analysis_due] if analysis_due is not None else []), default=None)

    def end_pass(self, snapshot) -> None:
        """A service no longer in the catalog (every instance gone) is reconciled no more: its
        timers go with it (kept, one already due would wake the daemon for a pass every 0.1 s
        for ever). It comes back with its instances: its analysis or grace is read again. But a
        rollback asked for it is carried on here: with every instance gone (the new version down
        for good) is when it is needed most, and starting the drained containers brings them back."""
        with self.progressive.lock:
            for timers in (self.unhealthy_since, self.rollback_due, self.progressive.due):
                for service in [s for s in timers if s not in snapshot]:
                    del timers[service]
        for service in self.stores.policies.rollbacks_waiting():
            if service not in snapshot:
                self._carry_on_rollback(service, [])

    # --- a rollback to a drained version: start its containers, then make it stable -------
    def _carry_on_rollback(self, service: str, registered) -> None:
        """A waiting rollback request: its drained containers asked to start (once), the
        version made stable once one of its instances is admitted, given up (with the reason in
        the history) at its deadline or when another version became stable meanwhile."""
        cas, request = self.stores.policies.rollback(service)
        self.rollback_due.pop(service, None)
        if request is None:
            return
        try:
            policy = self.stores.policies.get(service)[1]
        except InvalidValue:
            return
        self.rollback_due[service] = time.monotonic() + max(0.0, request.deadline - time.time())
        if policy is None or policy.stable == request.version:
            self.stores.policies.clear_rollback(service, cas)
        elif policy.stable != request.replacing:
            self._give_up_rollback(service, request, cas, f"{policy.stable} became stable meanwhile")
        elif any(ri.admitted and ri.instance.version == request.version for ri in registered):
            with self.progressive.lock:
                self._finish_rollback(service, request.version)
        elif time.time() >= request.deadline:
            self._give_up_rollback(service, request, cas, f"no instance of {request.version} passed its tests within "
                                                          f"{request.deadline - request.asked:.0f} s of the request "
                                                          f"(`gatekeeper why {service}` says why)")
        elif not request.started:
            for c in request.containers:
                self.stores.node_records.request_stopped(c["node"], c["instance"], c["id"], c.get("started", ""),
                                                         "start", f"rollback of {service} to {request.version}")
                log.info("%s: rollback to %s: asked %s to start %s", service, request.version, c["node"], c["name"])
            self.stores.policies.put_rollback(service, replace(request, started=True), cas)

    def _finish_rollback(self, service: str, version: str) -> bool:
        """When a rollback to `version` waits: make it stable (as `gatekeeper rollback` does with
        admitted instances) and clear the request. True when a request for `version` was there:
        the pass is taken by it, even when another version became stable meanwhile (the rollback
        is then given up, and the old version is not promoted over the newer one)."""
        cas, request = self.stores.policies.rollback(service)
        if request is None or request.version != version:
            return False

        made = {"here": False}

        def change(p: RoutingPolicy) -> Optional[RoutingPolicy]:
            made["here"] = p.stable == request.replacing
            return replace(p, stable=version, previous=p.stable, canary="", weight=0) if made["here"] else None

        after = update_policy(self.stores.policies, service, change)
        if after is not None and after.stable == version and not made["here"]:
            # made stable by an earlier pass whose clearing of the request failed: recorded then
            self.stores.policies.clear_rollback(service)
            return True
        if after is None or after.stable != version:
            self._give_up_rollback(service, request, cas, f"{after.stable if after else 'another version'} "
                                                          "became stable meanwhile")
            return True
        self.stores.policies.clear_rollback(service, cas)
        self.stores.history.add(service, "rolled back", version=version, previous=request.replacing, by=request.by,
                                started=[c["name"] for c in request.containers])
        metrics.PROMOTIONS.labels(service, "rolled back").inc()
        log.info("%s: rolled back to %s, whose drained containers were started and passed again; %s gets no "
                 "more traffic", service, version, request.replacing)
        return True

    def _give_up_rollback(self, service: str, request: RollbackRequest, cas: int, why: str) -> None:
        if self.stores.policies.clear_rollback(service, cas):
            self.stores.history.add(service, "rollback given up", version=request.version, by="gatekeeper",
                                    reason=why)
            log.warning("%s: rollback to %s given up: %s", service, request.version, why)

    def reconcile(self, service: str, registered) -> None:
        """At every pass, per service: a waiting rollback carried on, the progressive
        analysis's next step when due, and auto-abort of a canary none of whose instances is
        healthy any more: at once when every one failed its re-verification, after
        `unhealthy_grace` seconds when health checks fail (a single stale read of the catalog
        must not abort a healthy canary)."""
        self._carry_on_rollback(service, registered)
        self.progressive.tick(service, registered)
        try:
            policy = self.stores.policies.get(service)[1]          # after the step, which may have moved it on
        except InvalidValue:
            return
        self._follow_swarm_update(service, registered, policy)
        canary = [ri for ri in registered if policy and ri.instance.version == policy.canary]
        if not policy or not policy.canary or not canary or any(ri.admitted for ri in canary):
            self.unhealthy_since.pop(service, None)
            return
        verdicts = [self.stores.verdicts.get(ri.instance.id) for ri in canary]
        all_failed = all(v is not None and v.applies_to(ri.instance) and v.final and v.state != PASSED
                         for ri, v in zip(canary, verdicts))
        since = self.unhealthy_since.setdefault(service, time.monotonic())
        if not all_failed and time.monotonic() - since < self.unhealthy_grace:
            return
        reasons = sorted({f"{ri.instance.id}: " + ", ".join(f"{c} {st}" for c, st in ri.checks.items() if st != "passing")
                          for ri in canary})
        log.warning("%s: canary %s has no healthy instance left; aborting it", service, policy.canary)
        self.unhealthy_since.pop(service, None)
        try:
            abort(self.stores, service, why="no healthy canary instance: " + "; ".join(reasons)[:300],
                  by="gatekeeper (auto-rollback)")
            metrics.PROMOTIONS.labels(service, "aborted").inc()
        except PromotionError:
            pass

    def _follow_swarm_update(self, service: str, registered, policy: Optional[RoutingPolicy]) -> None:
        """A Swarm rolling update in auto mode: its new version is the canary, with its share
        of the admitted tasks as its weight, while Swarm replaces the old tasks one by one; the
        old version keeps the rest of the traffic on the tasks it still has, as Swarm's update
        means it to. Stable once no admitted task of the old version is left; withdrawn once
        none of its own is (Swarm rolled the update back)."""
        if not policy or policy.mode != AUTO or not policy.canary or not policy.stable \
                or not any(ri.instance.swarm_service for ri in registered):
            return
        new = [ri for ri in registered if ri.instance.version == policy.canary]
        old = [ri for ri in registered if ri.instance.version == policy.stable and ri.admitted
               and ri.instance.swarm_service]
        if new and (not all(ri.instance.swarm_service for ri in new) or not any(ri.admitted for ri in new)):
            return                          # not a Swarm update's canary, or its task not admitted yet
        if not new:
            after = update_policy(self.stores.policies, service, lambda p: replace(p, canary="", weight=0)
                                  if p.canary == policy.canary and p.mode == AUTO else None)
            if after and not after.canary:
                log.info("%s: %s has no task left (Swarm's update rolled back); %s serves all traffic",
                         service, policy.canary, after.stable)
                self.stores.history.add(service, "canary withdrawn", version=policy.canary, by="gatekeeper (swarm update)",
                                        reason="no task of it left")
            return
        if not old:
            after = update_policy(self.stores.policies, service, lambda p: p.promoted(policy.canary)
                                  if p.canary == policy.canary and p.mode == AUTO else None)
            if after and after.stable == policy.canary:
                log.info("%s: %s is stable: Swarm's update left no task of %s", service, policy.canary, policy.stable)
                self._became_stable(service, policy.canary, policy, "gatekeeper (swarm update)")
            return
        share = _share(len([ri for ri in new if ri.admitted]), len(old))
        if share != policy.weight:
            update_policy(self.stores.policies, service, lambda p: replace(p, weight=share)
                          if p.canary == policy.canary and p.mode == AUTO and p.weight != share else None)

    # --- what the progressive analysis decides, carried out with check-and-set -------------
    def _analysis_weight(self, service: str, version: str, weight: int) -> bool:
        after = update_policy(self.stores.policies, service, lambda p: replace(p, weight=weight)
                              if p.canary == version and p.mode == PROGRESSIVE and p.weight != weight else None)
        return bool(after and after.canary == version and after.weight == weight)

    def _analysis_promote(self, service: str, version: str) -> bool:
        before = self.stores.policies.get(service)[1]
        after = update_policy(self.stores.policies, service, lambda p: p.promoted(version)
                              if p.canary == version and p.mode == PROGRESSIVE else None)
        if not after or after.stable != version:
            return False
        log.info("%s: %s passed every step of its analysis and is now stable", service, version)
        self._became_stable(service, version, before, "gatekeeper (analysis)")
        return True

    def _analysis_roll_back(self, service: str, version: str, reason: str, instances) -> bool:
        try:
            abort(self.stores, service, why=reason, by="gatekeeper (analysis)")
        except PromotionError:
            return False
        metrics.PROMOTIONS.labels(service, "rolled back").inc()
        log.warning("%s: %s %s", service, version, reason)
        for ri in instances:                     # the Consul UI shows why beside the gate
            try:
                verdict = self.stores.verdicts.get(ri.instance.id)
                self.stores.node_records.set_gate(ri.instance, True, f"{verdict.summary if verdict else 'passed'}; "
                                                                     f"then {reason}")
            except Exception as exc:
                log.warning("%s: could not note the rollback on %s's gate: %s", service, ri.instance.id, exc)
        return True

    def drain_later(self, service: str, stable: str) -> None:
        """Once every live proxy serves `stable` (their reports in Consul, written after nginx
        applied it) and the drain period has passed, stop the containers of admitted instances
        of other versions: those registered when `stable` was promoted. A version that arrives
        during the drain is newer, not old, and is never stopped by it. Each stop is asked of
        the registrator of the container's own host (registrator.actions), so it reaches
        containers on every host."""
        if not self.stop_old:
            return
        # those whose gate is open only (failing health checks or not): a newer version still
        # under test is not old (its pass, a moment later, may make it stable while this drain decides)
        old = {ri.instance.container_id for ri in self.stores.instances.of(service)
               if ri.instance.version != stable and ri.gate_status == "passing"}
        threading.Thread(target=self._drain, args=(service, stable, old), name=f"drain {service}",
                         daemon=True).start()

    def _drain(self, service: str, stable: str, old: set) -> None:
        if self._served_everywhere(service, stable):
            time.sleep(self.drain_seconds)
            self._stop_old(service, stable, old)

    def _served_everywhere(self, service: str, stable: str) -> bool:
        """Wait until every live proxy reports serving `stable` as the stable version: an old
        instance stopped before a proxy switched fails that proxy's requests (a proxy busy with
        other routes, or restarting, may take seconds). False when the policy moved on meanwhile
        (that promotion drains) or after `confirm_timeout` (the old instances stay up, and the
        next promotion's drain stops them). Consul unreachable for a while: asked again."""
        deadline, index, waiting, lagging = time.monotonic() + self.confirm_timeout, 0, None, ["(Consul unreachable)"]
        while True:
            try:
                policy = self.stores.policies.get(service)[1]
                if policy is None or policy.stable != stable:
                    return False
                lagging = self.stores.proxies.lagging(service, "stable", stable)
                if not lagging:
                    return True
            except TRANSIENT + (InvalidValue,) as exc:
                log.warning("%s: drain after %s: cannot read the policy or the proxies' reports yet: %s",
                            service, stable, exc)
                index = 0
                time.sleep(1.0)
            left = deadline - time.monotonic()
            if left <= 0:
                reason = (f"{', '.join(lagging)} did not serve {stable} within {self.confirm_timeout:.0f} s; "
                          "old instances are left running until the next promotion drains them")
                log.warning("%s: not draining: %s", service, reason)
                try:
                    self.stores.history.add(service, "drain held", version=stable, by="gatekeeper", reason=reason)
                except TRANSIENT:
                    pass
                return False
            if lagging != waiting:
                log.info("%s: draining once %d proxy(ies) serve %s: %s", service, len(lagging), stable,
                         ", ".join(lagging))
                waiting = lagging
            try:
                index = self.stores.proxies.wait_served(index, min(5.0, left))
            except TRANSIENT:
                index = 0
                time.sleep(1.0)

    def _stop_old(self, service: str, stable: str, old: set) -> None:
        stopped: dict = {}                              # version -> [{"name", "node"}]
        try:
            _, policy = self.stores.policies.get(service)
            if policy is None or policy.stable != stable:
                return                                  # promoted again meanwhile
            for ri in self.stores.instances.of(service):
                inst = ri.instance
                if inst.version in (policy.stable, policy.canary) or inst.container_id not in old:
                    continue
                if inst.swarm_service:
                    continue                            # Swarm owns its tasks: its update replaces them
                verdict = self.stores.verdicts.get(inst.id)
                if not verdict or verdict.state != PASSED or not verdict.applies_to(inst):
                    continue                            # failed builds stay up for inspection
                if verdict.promotion_pending:
                    continue                            # its promotion is still to be made
                self.stores.node_records.request_action(inst, "stop",
                                                        f"{inst.version} drained after {stable} was promoted")
                stopped.setdefault(inst.version, []).append({"name": inst.container_name, "node": inst.node,
                                                             "id": inst.container_id, "started": inst.started,
                                                             "instance": inst.id})
                log.info("%s: %s (%s) drained; asked %s to stop it", service, inst.container_name, inst.version,
                         inst.node or "its host")
            # what a rollback to that version needs started again (the containers are stopped, not removed)
            for version, containers in sorted(stopped.items()):
                self.stores.history.add(service, "drained", version=version, stable=stable, by="gatekeeper",
                                        containers=sorted(containers, key=lambda c: (c["node"], c["name"])))
            if stopped:
                self._remove_old_drained(service)
        except Exception:
            log.exception("%s: stopping old instances failed", service)

    def _remove_old_drained(self, service: str) -> None:
        """Keep the stopped containers of the `keep_versions` versions drained last (ready for
        `gatekeeper rollback`), never those of the stable, canary or previous version; ask
        each host to remove the others' (only the run the drain stopped: a remove that comes
        while that stop is under way waits for it), a "removed" event each."""
        _, policy = self.stores.policies.get(service)
        routed = {policy.stable, policy.canary, policy.previous} if policy else set()
        kept = kept_drained(self.stores.history.of(service))
        for version in [v for v in kept if v not in routed][self.keep_versions:]:
            containers = [c for c in kept[version] if c.get("id") and c.get("node") and c.get("instance")]
            for c in containers:
                self.stores.node_records.request_stopped(c["node"], c["instance"], c["id"], c.get("started", ""),
                                                         "remove", f"{version} is older than the {self.keep_versions} "
                                                                   "drained versions kept")
            self.stores.history.add(service, "removed", version=version, by="gatekeeper",
                                    containers=[{"name": c["name"], "node": c["node"]} for c in containers],
                                    reason=f"only the {self.keep_versions} versions drained last are kept "
                                           "(gatekeeper run --keep-versions)")
            log.info("%s: asked the hosts to remove %s's stopped containers (%s)", service, version,
                     ", ".join(c["name"] for c in containers) or "none on record")


def task_share(registered, inst: Instance, stable: str) -> Optional[int]:
    """For a Swarm task of a new version that passed its tests while admitted tasks of the stable
    version still run (a rolling update): the new version's share of the admitted tasks, in
    percent (1 to 99), counting this one. None for anything else: a plain container, or no
    admitted task of the stable version left (the new version is simply stable)."""
    if not inst.swarm_service:
        return None
    tasks = [ri for ri in registered if ri.instance.swarm_service == inst.swarm_service and ri.admitted]
    old = sum(1 for ri in tasks if ri.instance.version == stable)
    if not old:
        return None
    new = len({ri.instance.id for ri in tasks if ri.instance.version == inst.version} | {inst.id})
    return _share(new, old)


def _share(new: int, old: int) -> int:
    return min(99, max(1, round(100 * new / (new + old))))


def _labelled(inst: Instance) -> Callable[[RoutingPolicy], RoutingPolicy]:
    """The policy as the instance's labels would have it: gatekeeper.mode sets the mode,
    gatekeeper.analysis the progressive settings it names (registrator validated both; an
    instance registered some other way is checked again here and ignored when invalid)."""
    def apply(p: RoutingPolicy) -> RoutingPolicy:
        try:
            settings = parse_analysis_label(inst.analysis) if inst.analysis else {}
            analysis = validate_analysis({**asdict(p.analysis), **settings}) if settings else p.analysis
        except InvalidValue as exc:
            log.error("%s: ignoring the gatekeeper.analysis label of %s: %s", inst.service, inst.container_name, exc)
            analysis = p.analysis
        mode = inst.mode if inst.mode in MODES else p.mode
        return p if (mode, analysis) == (p.mode, p.analysis) else replace(p, mode=mode, analysis=analysis)
    return apply


# --- operator commands: each returns the new policy and a sentence that explains it ----------

PROMOTE_STEPS = (25, 50, 100)


def _policy_or_error(policies: PolicyStore, service: str) -> RoutingPolicy:
    try:
        policy = policies.get(service)[1]
    except InvalidValue as exc:
        raise PromotionError(f"the routing policy of {service} is invalid ({exc}); fix or delete "
                             f"{POLICIES}{service} in Consul KV") from None
    if policy is None:
        raise PromotionError(f"unknown service {service!r}: it has no routing policy yet "
                             "(a service gets one when its first instance passes its tests)")
    return policy


def _how_to_bring_back(stores: Stores, service: str, version: str) -> str:
    """What to run for a rollback to a version none of whose instances is admitted: start the
    containers the drain stopped (as its last "drained" event names them), or deploy it again."""
    drained = _drained(stores, service, version)
    tail = (f"once they pass their tests again, {version} is stable again by itself in auto mode; in manual or "
            f"progressive mode run `gatekeeper rollback {service}` again. (`gatekeeper run --keep-old` keeps old "
            "versions running, ready for an instant rollback.)")
    if drained:
        by_node: dict = {}
        for c in drained:
            by_node.setdefault(c.get("node") or "", []).append(c["name"])
        starts = "; ".join(f"`docker start {' '.join(names)}`" + (f" on host {node}" if node else "")
                           for node, names in sorted(by_node.items()))
        return f"Its containers were stopped after the drain, not removed: start them again ({starts}); " + tail
    return (f"Deploy {version} again (`docker run` its image with the service's labels, or `docker service update "
            f"--image` for a Swarm service); " + tail)


def _admitted_versions(instances: InstanceStore, service: str) -> set:
    return {ri.instance.version for ri in instances.of(service) if ri.admitted}


def promote(stores: Stores, service: str, full: bool = False, by: str = "operator") -> Tuple[RoutingPolicy, str]:
    """Next step of the canary (25 % -> 50 % -> stable), or straight to stable with `full`;
    `by` names who asked, in the history."""
    before = _policy_or_error(stores.policies, service)

    def change(p: RoutingPolicy) -> RoutingPolicy:
        if not p.canary:
            raise PromotionError(f"{service} has no canary to promote (stable is {p.stable or 'not set'}); "
                                 "a canary appears when a new version passes its tests in manual mode")
        nxt = next((s for s in PROMOTE_STEPS if s > p.weight), 100)
        if full or nxt >= 100:
            return p.promoted(p.canary)
        return replace(p, weight=nxt)

    after = update_policy(stores.policies, service, change)
    if after.stable != before.stable:
        stores.history.add(service, "promoted", version=after.stable, previous=before.stable, by=by)
        return after, (f"{service}: {after.stable} is now stable and takes all traffic "
                       f"({before.stable or 'nothing'} is kept as the rollback target)")
    stores.history.add(service, "weight", version=after.canary, weight=after.weight, by=f"{by} (promote)")
    return after, (f"{service}: canary {after.canary} now takes {after.weight}% of traffic; "
                   f"promote again for the next step, or --full for all of it")


def set_weight(stores: Stores, service: str, weight: int, by: str = "operator") -> Tuple[RoutingPolicy, str]:
    if not 0 <= weight <= 100:
        raise InvalidValue("weight", weight, "a whole number from 0 to 100")
    _policy_or_error(stores.policies, service)

    def change(p: RoutingPolicy) -> RoutingPolicy:
        if not p.canary:
            raise PromotionError(f"{service} has no canary; a weight applies to a canary only")
        return replace(p, weight=weight)

    after = update_policy(stores.policies, service, change)
    stores.history.add(service, "weight", version=after.canary, weight=weight, by=by)
    return after, f"{service}: canary {after.canary} takes {weight}% of traffic, stable {after.stable} the rest"


def abort(stores: Stores, service: str, why: str = "", by: str = "operator") -> Tuple[RoutingPolicy, str]:
    before = _policy_or_error(stores.policies, service)

    def change(p: RoutingPolicy) -> RoutingPolicy:
        if not p.canary:
            raise PromotionError(f"{service} has no canary to abort; stable {p.stable} serves all traffic")
        return replace(p, canary="", weight=0, aborted=p.canary)

    after = update_policy(stores.policies, service, change)
    stores.history.add(service, "aborted", version=before.canary, by=by, **({"reason": why} if why else {}))
    return after, (f"{service}: canary {before.canary} aborted{' (' + why + ')' if why else ''}; "
                   f"stable {after.stable} serves all traffic. {before.canary}'s instances keep running "
                   "but get no requests")


def try_canary(stores: Stores, service: str, version: str) -> Tuple[RoutingPolicy, str]:
    """Make an admitted version (an aborted canary, typically) the canary again, at weight 0."""
    before = _policy_or_error(stores.policies, service)
    if version == before.stable:
        raise PromotionError(f"{version} is already the stable version of {service}")
    if version not in _admitted_versions(stores.instances, service):
        raise PromotionError(f"{service} {version} has no admitted instance (`gatekeeper why {service}` "
                             "says why); deploy it, or `gatekeeper retest` its instances first")

    def change(p: RoutingPolicy) -> Optional[RoutingPolicy]:
        return None if p.canary == version and p.aborted != version else p.with_canary(version)

    after = update_policy(stores.policies, service, change)
    stores.history.add(service, "canary", version=version, by="operator",
                       **({"was": "aborted"} if before.aborted == version else {}))
    return after, (f"{service}: {version} is the canary at 0% (requests with X-Canary: always reach it); "
                   f"`gatekeeper weight {service} N` or `promote` to move it on")


ROLLBACK_PATIENCE = 600.0      # seconds a rollback waits for its drained containers to pass again


def kept_drained(history: list) -> dict:
    """version -> the containers its last drain stopped (as the "drained" history event names
    them), for each version whose stopped containers were not removed since; most recently
    drained first."""
    kept: dict = {}
    for e in history:                                   # oldest first
        version = e.get("version")
        if e.get("event") == "drained":
            kept.pop(version, None)
            kept[version] = list(e.get("containers") or ())
        elif e.get("event") == "removed":
            kept.pop(version, None)
    return dict(reversed(list(kept.items())))


def _drained(stores: Stores, service: str, version: str) -> list:
    """The containers of `version` the last drain stopped and nobody removed since."""
    return kept_drained(stores.history.of(service)).get(version, [])


def rollback(stores: Stores, service: str, by: str = "operator") -> Tuple[RoutingPolicy, str]:
    """The previous stable version stable again: at once when it has admitted instances; when
    the drain stopped them, a rollback request that the leading gatekeeper carries out (it asks
    each container's registrator to start it; tested again, they take the traffic back)."""
    before = _policy_or_error(stores.policies, service)
    if not before.previous:
        raise PromotionError(f"{service} has no previous stable version to roll back to")
    if before.previous not in _admitted_versions(stores.instances, service):
        return _roll_back_to_drained(stores, service, before, by)

    def change(p: RoutingPolicy) -> RoutingPolicy:
        return replace(p, stable=p.previous, previous=p.stable, canary="", weight=0)

    after = update_policy(stores.policies, service, change)
    stores.history.add(service, "rolled back", version=after.stable, previous=before.stable, by=by)
    return after, f"{service}: rolled back to {after.stable}; {before.stable} gets no more traffic"


def _roll_back_to_drained(stores: Stores, service: str, before: RoutingPolicy, by: str) -> Tuple[RoutingPolicy, str]:
    version = before.previous
    drained = [c for c in _drained(stores, service, version) if c.get("id") and c.get("instance") and c.get("node")]
    if not drained:
        raise PromotionError(f"cannot roll {service} back to {version}: it has no admitted instance. "
                             + _how_to_bring_back(stores, service, version))
    cas, waiting = stores.policies.rollback(service)
    now = time.time()
    names = containers_in_words(drained)
    then = (f"once one of them passes its tests again, {version} is stable and {before.stable} gets no more "
            f"traffic (`gatekeeper status {service}` shows how far it got; it gives up after "
            f"{ROLLBACK_PATIENCE:.0f} s and says why)")
    if waiting and waiting.version == version and now < waiting.deadline:
        return before, f"{service}: the rollback to {version} is under way already: starting {names}; {then}"
    request = RollbackRequest(version, before.stable, tuple(drained), by, now, now + ROLLBACK_PATIENCE)
    if not stores.policies.put_rollback(service, request, cas):
        raise Conflict(f"a rollback of {service} was asked at the same moment; run `gatekeeper status {service}`")
    stores.history.add(service, "rollback asked", version=version, previous=before.stable, by=by,
                       containers=[{"name": c["name"], "node": c["node"]} for c in drained])
    return before, (f"{service}: rolling back to {version}: the drain stopped its containers; gatekeeper asks "
                    f"their hosts to start them ({names}); {then}")


def set_mode(stores: Stores, service: str, mode: str, settings: Optional[dict] = None) -> Tuple[RoutingPolicy, str]:
    """Set the promotion mode; `settings` changes progressive mode's (validated, the rest kept)."""
    if mode not in MODES:
        raise InvalidValue("mode", mode, "'auto', 'manual' or 'progressive'")
    known = stores.policies.get(service)[1] is not None or bool(stores.instances.of(service))
    if not known:
        raise PromotionError(f"unknown service {service!r}: no instance and no policy")
    current = _policy_or_error(stores.policies, service) if stores.policies.get(service)[1] else RoutingPolicy(service)
    analysis = validate_analysis({**asdict(current.analysis), **(settings or {})})
    after = update_policy(stores.policies, service, lambda p: replace(p, mode=mode, analysis=analysis))
    stores.history.add(service, "mode", mode=mode, by="operator",
                       **({"settings": asdict(analysis)} if mode == PROGRESSIVE else {}))
    a = analysis
    explain = {AUTO: "a new version that passes becomes stable at once and old ones drain",
               MANUAL: "a new version that passes becomes a canary at 0%; `gatekeeper promote` moves it on",
               PROGRESSIVE: (f"a new version that passes becomes a canary at {a.step}%, then every {a.interval:g} s "
                             f"gains {a.step}% up to {a.max_weight}% and becomes stable while its success rate "
                             f"stays >= {a.success_rate:g}% and p99 <= {a.p99_ms:g} ms over at least "
                             f"{a.min_requests} requests; {a.threshold} failed checks roll it back "
                             "(needs gatekeeper run --prometheus)")}[mode]
    return after, f"{service}: mode {mode}: {explain}"
