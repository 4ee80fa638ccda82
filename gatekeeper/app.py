"""`gatekeeper run`, wired: the parts built from the command line's options, once, here.

The daemon holds the reconcilers in the order each pass runs them: the gate (tests and gates),
the promoter (canary checks, progressive steps), Swarm rolling updates, the healer. The
autoscaler follows load on a timer of its own. Prometheus, when given, is one adapter shared by
progressive analysis and the autoscaler.
"""
from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from typing import Dict, Optional

from catalog import schema
from catalog.cli import EXIT_FAILED, EXIT_OK
from catalog.metrics import announce, serve_metrics, withdraw
from catalog.signals import STOP_SIGNALS
from catalog.stores import Stores

from . import metrics
from .admission.gate import Gate
from .admission.tester import DockerTester, RunLimits
from .daemon import Daemon
from .fleet.autoscaler import Autoscaler
from .fleet.healer import Healer, HealSettings
from .fleet.rollout import Rollout
from .fleet.scaling import Load
from .fleet.swarm import Swarm
from catalog.leader import LeaderLock
from .prometheus import Prometheus
from .promotion.promoter import Promoter


@dataclass(frozen=True)
class Options:
    """`gatekeeper run`'s settings, checked (`options_from`); the defaults are the parser's."""
    identity: str
    wait: float
    test_labels: Dict[str, str]
    test_timeout: float
    test_memory: str
    test_cpus: float
    parallel: int
    drain_seconds: float
    keep_old: bool
    keep_versions: int
    reverify_every: float
    forget_after: float
    prometheus: str
    heal: bool
    heal_after: float
    heal_tries: int
    heal_backoff: float
    heal_share: float
    scale_every: float
    metrics: str


def options_from(args) -> Options:
    """The parsed command line -> Options; a value out of range raises ValueError saying which."""
    labels = {}
    for item in args.test_label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--test-label must be KEY=VALUE, got {item!r}")
        labels[key] = value
    if args.parallel < 1:
        raise ValueError("--parallel must be at least 1")
    if not 0 <= args.keep_versions <= 100:
        raise ValueError(f"--keep-versions {args.keep_versions}: expected a whole number from 0 to 100")
    if args.forget_after < 0:
        raise ValueError("--forget-after must be zero or more seconds")
    if args.heal_after < 0 or args.heal_tries < 1 or args.heal_backoff < 0 or not 0 < args.heal_share <= 1:
        raise ValueError("--heal-after and --heal-backoff must be zero or more seconds, --heal-tries at least 1, "
                         "--heal-share a share above 0 and at most 1")
    if not 0.5 <= args.scale_every <= 3600:
        raise ValueError(f"--scale-every {args.scale_every:g}: expected seconds from 0.5 to 3600")
    return Options(identity=args.id, wait=args.wait, test_labels=labels, test_timeout=args.test_timeout,
                   test_memory=args.test_memory, test_cpus=args.test_cpus, parallel=args.parallel,
                   drain_seconds=args.drain_seconds, keep_old=args.keep_old,
                   keep_versions=args.keep_versions, reverify_every=args.reverify_every,
                   forget_after=args.forget_after, prometheus=args.prometheus or "", heal=not args.no_heal,
                   heal_after=args.heal_after, heal_tries=args.heal_tries, heal_backoff=args.heal_backoff,
                   heal_share=args.heal_share, scale_every=args.scale_every, metrics=args.metrics or "")


def build(stores: Stores, engine, options: Options) -> Daemon:
    """Every part of the daemon, joined; `engine` is a docker client (test runs, Swarm)."""
    prometheus: Optional[Prometheus] = Prometheus(options.prometheus) if options.prometheus else None
    tester = DockerTester(engine, RunLimits(timeout=options.test_timeout, memory=options.test_memory,
                                            cpus=options.test_cpus), options.test_labels)
    promoter = Promoter(stores, drain_seconds=options.drain_seconds, stop_old=not options.keep_old,
                        prometheus=prometheus, keep_versions=options.keep_versions)
    gate = Gate(stores, tester, parallel=options.parallel, on_admitted=promoter.admitted,
                reverify_every=options.reverify_every, forget_after=options.forget_after)
    swarm = Swarm(engine)
    reconcilers = [gate, promoter, Rollout(stores, swarm)]
    if options.heal:
        reconcilers.append(Healer(stores, HealSettings(after=options.heal_after, max_tries=options.heal_tries,
                                                       backoff=options.heal_backoff, share=options.heal_share)))
    daemon = Daemon(stores.instances, stores.policies, reconcilers,
                    LeaderLock(stores.locks, options.identity), wait=options.wait,
                    on_lead=lambda: schema.claim(stores.consul))
    load = prometheus.service_load if prometheus else (
        lambda service, window: Load(None, why="gatekeeper runs without --prometheus"))
    Autoscaler(stores, swarm, load, daemon.leader.is_leader.is_set,
               interval=options.scale_every).start(daemon.stopping)
    return daemon


def run(stores: Stores, engine, options: Options, consul_address: str) -> int:
    """Build the daemon, serve its metrics, and run it until SIGTERM or SIGINT."""
    daemon = build(stores, engine, options)
    announced = None
    if options.metrics:
        serve_metrics(options.metrics)
        metrics.LEADER.set_function(lambda: 1.0 if daemon.leader.is_leader.is_set() else 0.0)
        announced = announce(stores.proxies, options.metrics, "gatekeeper", daemon.leader.identity)

    def on_signal(*_):
        # The main thread may sit in a Consul call: leave it now. Nothing else happens in the
        # handler (it may run while the main thread holds a lock the clean-up needs); a second
        # signal does not cut the clean-up short.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(EXIT_OK)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    logging.info("gatekeeper %s watching Consul at %s", daemon.leader.identity, consul_address)
    try:
        daemon.run()
    except SystemExit:
        # A test cut short keeps its "testing" verdict and is run again by whichever daemon leads next.
        daemon.stop()
        daemon.shutdown()
        withdraw(stores.proxies, announced)
        raise
    if daemon.refused:
        print(f"gatekeeper: {daemon.refused}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
