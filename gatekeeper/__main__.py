"""gatekeeper: test-gated admission and promotion of service instances.

  gatekeeper run                          the daemon: test new instances, promote what passes
  gatekeeper status [SERVICE]             services, versions, instances, verdicts, what the proxy answers
  gatekeeper why INSTANCE|SERVICE|CONTAINER   why it gets traffic or not: verdict, test output, checks, proxies
  gatekeeper promote SERVICE [--full]     canary to the next step (25, 50, stable), or stable now
  gatekeeper weight SERVICE N             N percent of traffic to the canary
  gatekeeper abort SERVICE                canary out of traffic; stable serves everything
  gatekeeper canary SERVICE VERSION       an admitted version (an aborted canary, say) is the canary again, at 0%
  gatekeeper rollback SERVICE             back to the previous stable version
  gatekeeper mode SERVICE auto|manual|progressive   auto: a passed version becomes stable; manual: a
                                          canary at 0%; progressive: a canary moved on by its live metrics
  gatekeeper wait SERVICE --version V     for CD jobs: exit 0 when every proxy serves V, 1 tests failed, 4 timed out
  gatekeeper history SERVICE              promotions, aborts, rollbacks
  gatekeeper tests SERVICE [IMAGE]        default integration-test image for the service
  gatekeeper retest INSTANCE|SERVICE      run the tests again (live instances keep serving)
  gatekeeper admit INSTANCE --reason TEXT break-glass: admit an instance its tests did not pass
                                          (needs the breakglass token; recorded in history)
  gatekeeper forget SERVICE               remove a service's policy, default test image and history
  gatekeeper scale SERVICE N              N replicas of a Swarm service (within its gatekeeper.scale bounds)
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict

import requests

from catalog.cli import (EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, JsonAwareParser,
                         add_consul_options, consul_address, consul_refusal, consul_unreachable, emit_error,
                         exit_code_epilog)
from catalog.consul_client import ACLPermissionDenied, ConsulException, read_token
from catalog.errors import Refused, StackError, Unreachable
from catalog.logs import setup_logging
from catalog.metrics import metrics_address
from catalog.model import MODES
from catalog.stores import Stores
from catalog.validation import check

from .promotion.promoter import PromotionError
from .report.status import (collect, collect_why, find_instance, history_details, is_instance_id, render_text,
                     render_why, require_known)


def build_parser() -> argparse.ArgumentParser:
    p = JsonAwareParser(prog="gatekeeper", description=__doc__.split("\n\n")[0],
                        epilog=__doc__.split("\n\n", 1)[1] + "\n" + exit_code_epilog(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_consul_options(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name, help_text, service=True, json_flag=True, **kw):
        c = sub.add_parser(name, help=help_text, description=help_text.replace("%%", "%"), **kw)
        if service:
            c.add_argument("service", metavar="SERVICE", help="service name")
        if json_flag:
            c.add_argument("--json", action="store_true", help="one JSON object on stdout, errors included")
        add_consul_options(c, subcommand=True)
        return c

    run = command("run", "run the daemon", service=False, json_flag=False)
    run.add_argument("--parallel", type=int, default=2, metavar="N", help="instances tested at once (default %(default)s)")
    run.add_argument("--test-timeout", type=float, default=120.0, metavar="S",
                     help="seconds a test run may take (default %(default)s)")
    run.add_argument("--test-memory", default="256m", metavar="SIZE", help="memory limit of a test container (default %(default)s)")
    run.add_argument("--test-cpus", type=float, default=1.0, metavar="CPUS", help="CPU limit of a test container (default %(default)s)")
    run.add_argument("--test-label", action="append", default=[], metavar="KEY=VALUE",
                     help="extra label on every test container (repeatable)")
    run.add_argument("--drain-seconds", type=float, default=10.0, metavar="S",
                     help="after an automatic promotion, seconds between every live proxy serving the new "
                          "version and old instances' containers being stopped (default %(default)s)")
    run.add_argument("--keep-old", action="store_true", help="never stop old instances' containers")
    run.add_argument("--keep-versions", type=int, default=3, metavar="N",
                     help="stopped containers of the N versions drained last are kept for `gatekeeper rollback`; "
                          "those of older drained versions are removed (default %(default)s)")
    run.add_argument("--reverify-every", type=float, default=0.0, metavar="S",
                     help="re-run the tests of live instances this often, seconds (default 0: never)")
    run.add_argument("--forget-after", type=float, default=900.0, metavar="S",
                     help="seconds a gone instance's verdict is kept (default %(default)s)")
    run.add_argument("--wait", type=float, default=30.0, metavar="S",
                     help="blocking query wait, seconds (default %(default)s)")
    run.add_argument("--id", default="", help="identity in the leader lock (default gatekeeper@HOST)")
    run.add_argument("--prometheus", default="http://127.0.0.1:9090", metavar="URL",
                     help="Prometheus that progressive mode asks for each version's success rate and latency, "
                          "'' for none (progressive checks are then inconclusive) (default %(default)s)")
    run.add_argument("--metrics", default="", type=metrics_address, metavar="HOST:PORT",
                     help="serve Prometheus metrics on this loopback address and announce them in Consul "
                          "(default: off)")
    run.add_argument("--heal-after", type=float, default=10.0, metavar="S",
                     help="seconds an admitted instance fails its health checks before it is restarted (plain "
                          "container with a restart policy) or replaced (Swarm task) (default %(default)s)")
    run.add_argument("--heal-tries", type=int, default=3, metavar="N",
                     help="restarts of one container before giving up on it (default %(default)s)")
    run.add_argument("--heal-backoff", type=float, default=5.0, metavar="S",
                     help="seconds before a container's second restart, doubling after (default %(default)s)")
    run.add_argument("--heal-share", type=float, default=0.25, metavar="F",
                     help="largest share of a service's instances replaced at once, at least one "
                          "(default %(default)s)")
    run.add_argument("--no-heal", action="store_true", help="never restart or replace unhealthy instances")
    run.add_argument("--scale-every", type=float, default=2.0, metavar="S",
                     help="seconds between the autoscaler's looks at Swarm services with a gatekeeper.scale "
                          "label (default %(default)s)")
    run.add_argument("-v", "--verbose", action="store_true", help="log debug detail")

    st = command("status", "show services, instances, verdicts and what the proxy answers", service=False)
    st.add_argument("service", nargs="?", metavar="SERVICE", help="one service (default: every service the stack knows)")
    st.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="S",
                    help="refresh in place every S seconds until Ctrl-C (2 when S is left out); with --json, "
                         "one JSON object per line per refresh")
    wy = command("why", "why an instance, a service's instances or a rejected container get traffic or not",
                 service=False)
    wy.add_argument("target", metavar="INSTANCE|SERVICE|CONTAINER")
    pr = command("promote", "move the canary to its next step (25%%, 50%%, stable)")
    pr.add_argument("--full", action="store_true", help="make the canary stable at once")
    wt = command("weight", "set the canary's share of traffic")
    wt.add_argument("percent", type=int, metavar="N", help="0 to 100")
    command("abort", "take the canary out of traffic")
    cn = command("canary", "make an admitted version (an aborted canary, say) the canary again, at 0%%")
    cn.add_argument("version", metavar="VERSION")
    command("rollback", "make the previous stable version stable again")
    md = command("mode", "auto, manual or progressive promotion")
    md.add_argument("mode", choices=list(MODES))
    for flag, key, kind, meta, what in (
            ("--step", "step", int, "PCT", "canary weight at the start and added at each passed check (default 10)"),
            ("--max", "max_weight", int, "PCT", "weight at which a passed check promotes (default 100)"),
            ("--interval", "interval", float, "S", "seconds between checks; also the metrics window (default 10)"),
            ("--threshold", "threshold", int, "N", "failed checks that roll the canary back (default 3)"),
            ("--min-requests", "min_requests", int, "N", "fewer requests in a window: no verdict, the step "
                                                         "holds (default 20)"),
            ("--success-rate", "success_rate", float, "PCT", "lowest share of non-5xx answers (default 99)"),
            ("--p99", "p99_ms", float, "MS", "highest p99 request time through the proxy (default 500)")):
        md.add_argument(flag, dest=f"analysis_{key}", type=kind, metavar=meta,
                        help=f"progressive: {what}; kept from before when not given")
    wa = command("wait", "wait until every proxy serves a version (exit 0), its tests fail (1) or time runs out (4)")
    wa.add_argument("--version", required=True)
    wa.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds (default %(default)s)")
    command("history", "promotions, aborts and rollbacks of a service")
    ts = command("tests", "set (or with no IMAGE show) the default integration-test image of a service")
    ts.add_argument("image", nargs="?", metavar="IMAGE", help="test image; instances that had none are tested with it at once")
    rt = command("retest", "run the tests of an instance, or of every instance of a service, again", service=False)
    rt.add_argument("target", metavar="INSTANCE|SERVICE")
    ad = command("admit", "break-glass: admit one instance whose tests did not pass, with the reason; needs the "
                          "breakglass token (the operator's may not write verdicts); recorded in history", service=False)
    ad.add_argument("target", metavar="INSTANCE")
    ad.add_argument("--reason", required=True, help="why, in a few words (kept in the verdict and the history)")
    command("forget", "remove the policy, default test image and history of a service that has no instance")
    sc = command("scale", "set the replica count of a Swarm service (each new task passes its gate first)")
    sc.add_argument("replicas", type=int, metavar="N", help="replicas, within the service's gatekeeper.scale min..max")
    return p


def cmd_run(args, stores: Stores) -> int:
    from catalog.engine import engine_client

    from . import app

    setup_logging("gatekeeper", args.verbose)
    options = app.options_from(args)
    # the engine runs the integration tests: wait for one that is not up yet (a host's boot)
    return app.run(stores, engine_client(what="the Docker Engine (gatekeeper)"), options, args.consul)


def _known_service(stores: Stores, service: str) -> None:
    check("service", service)
    require_known(stores, service)


def _emit(args, policy, message: str) -> int:
    print(json.dumps({"policy": asdict(policy), "message": message}, sort_keys=True) if args.json else message)
    return EXIT_OK


def _can_read_catalog(stores: Stores) -> None:
    """Consul always lists itself; a token that sees no service at all is missing or too weak,
    and an empty answer would be a lie."""
    if not stores.instances.service_names():
        raise ACLPermissionDenied("Permission denied: this token sees no service, not even consul")


def _swarm_if_any():
    """The local engine's Swarm, when it is a manager; None otherwise (status then shows no replicas)."""
    import docker

    from .fleet.swarm import Swarm, SwarmError, SwarmUnavailable
    try:
        swarm = Swarm(docker.from_env(timeout=5))
    except (docker.errors.DockerException, requests.RequestException):
        return None
    try:
        return swarm if swarm.active() else None
    except (SwarmError, SwarmUnavailable):
        # an engine that answers but will not say (joining or leaving a swarm, a refusal of its
        # own): asked again for each picture, where a service with Swarm tasks says why its
        # replicas are unknown and every other is reported from Consul alone
        return swarm


def cmd_status(args, stores: Stores) -> int:
    _can_read_catalog(stores)
    if args.service:
        _known_service(stores, args.service)
    swarm = _swarm_if_any()
    if args.watch is None:
        data = collect(stores, args.service, swarm)
        print(json.dumps(data, indent=2, sort_keys=True) if args.json else render_text(data),
              end="" if not args.json else "\n")
        return EXIT_OK
    if not 0.2 <= args.watch <= 3600:
        raise ValueError(f"--watch {args.watch:g}: expected seconds from 0.2 to 3600")
    try:
        while True:
            data = collect(stores, args.service, swarm)
            # Ctrl-C waits for the refresh being written: a program reading --json lines never
            # gets half of one (the signal is held while writing and delivered right after).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                if args.json:
                    print(json.dumps(data, sort_keys=True), flush=True)
                else:                                  # home, clear, then the same text as without --watch
                    print("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + f"every {args.watch:g} s, Ctrl-C to stop\n\n"
                          + render_text(data), end="", flush=True)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_why(args, stores: Stores) -> int:
    _can_read_catalog(stores)
    if not is_instance_id(args.target) and args.target not in stores.rejections.all():
        check("service", args.target)
    data = collect_why(stores, args.target)
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render_why(data), end="" if not args.json else "\n")
    return EXIT_OK


def cmd_canary(args, stores: Stores) -> int:
    from .promotion.promoter import try_canary
    _known_service(stores, args.service)
    check("version", args.version)
    return _emit(args, *try_canary(stores, args.service, args.version))


def cmd_forget(args, stores: Stores) -> int:
    check("service", args.service)
    live = stores.instances.of(args.service)
    if live:
        raise PromotionError(f"{args.service} still has {len(live)} registered instance(s) "
                             f"({', '.join(ri.instance.id for ri in live)}); stop them first, then forget")
    removed = stores.forget_service(args.service)
    if not removed:
        raise PromotionError(f"nothing to forget: {args.service!r} has no policy, default test image or history")
    print(json.dumps({"service": args.service, "removed": removed}) if args.json else
          f"{args.service}: removed its policy, default test image and history ({len(removed)} key(s))")
    return EXIT_OK


def cmd_promote(args, stores: Stores) -> int:
    from .promotion.promoter import promote
    _known_service(stores, args.service)
    return _emit(args, *promote(stores, args.service, full=args.full))


def cmd_weight(args, stores: Stores) -> int:
    from .promotion.promoter import set_weight
    _known_service(stores, args.service)
    return _emit(args, *set_weight(stores, args.service, args.percent))


def cmd_abort(args, stores: Stores) -> int:
    from .promotion.promoter import abort
    _known_service(stores, args.service)
    return _emit(args, *abort(stores, args.service))


def cmd_rollback(args, stores: Stores) -> int:
    from .promotion.promoter import rollback
    _known_service(stores, args.service)
    return _emit(args, *rollback(stores, args.service))


def cmd_mode(args, stores: Stores) -> int:
    from .promotion.promoter import set_mode
    check("service", args.service)
    settings = {k[len("analysis_"):]: v for k, v in vars(args).items() if k.startswith("analysis_") and v is not None}
    return _emit(args, *set_mode(stores, args.service, args.mode, settings))


def cmd_wait(args, stores: Stores) -> int:
    from .report.wait import WAIT_FAILED, WAIT_OK, WAIT_TIMEOUT, wait_for_version
    check("service", args.service)
    check("version", args.version)
    lines = []
    say = lines.append if args.json else (lambda line: print(line, flush=True))
    code = wait_for_version(stores, args.service, args.version, args.timeout, say=say)
    if args.json:
        summary = lines[-1] if lines else ""
        print(json.dumps({"ok": code == EXIT_OK, "service": args.service, "version": args.version, "exit": code,
                          "result": {WAIT_OK: "served", WAIT_FAILED: "failed", WAIT_TIMEOUT: "timed out"}[code],
                          "summary": summary, **({"error": summary} if code != EXIT_OK else {})}))
    return code


def cmd_history(args, stores: Stores) -> int:
    _known_service(stores, args.service)
    entries = stores.history.of(args.service)
    if args.json:
        # one JSON object, as every --json answer: the events, oldest first, under "history"
        print(json.dumps({"service": args.service, "history": entries}, indent=2, sort_keys=True))
        return EXIT_OK
    if not entries:
        print(f"{args.service}: no history yet")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("time", 0)))
        print(f"{when}  {e.get('event', '?'):<12} {history_details(e)}")
    return EXIT_OK


def cmd_tests(args, stores: Stores) -> int:
    check("service", args.service)
    if args.image is None:
        image = stores.policies.tests_image(args.service)
        print(json.dumps({"service": args.service, "image": image}) if args.json
              else f"{args.service}: {image or 'no default test image (each container names its own)'}")
        return EXIT_OK
    check("image", args.image)
    # read before the write: a running gatekeeper wakes on the new image and retests them at once,
    # and their "no test image" verdicts are gone by the time a read after it comes
    untested = [ri.instance.id for ri in stores.instances.of(args.service)
                if not ri.instance.tests_image and _lacked_test_image(stores.verdicts.get(ri.instance.id), ri.instance)]
    stores.policies.set_tests_image(args.service, args.image)
    print(json.dumps({"service": args.service, "image": args.image, "to_test": untested}) if args.json else
          f"{args.service}: instances without a gatekeeper.tests label are tested with {args.image}"
          + (f"; {len(untested)} instance(s) that had no test image will be tested now" if untested else ""))
    return EXIT_OK


def _lacked_test_image(verdict, inst) -> bool:
    return verdict is not None and verdict.applies_to(inst) and verdict.lacked_test_image


def cmd_retest(args, stores: Stores) -> int:
    target = args.target
    if is_instance_id(target):
        found = [ri.instance.id for ri in [find_instance(stores.instances, target)] if ri is not None]
    else:
        check("service", target)
        found = [ri.instance.id for ri in stores.instances.of(target)]
    if not found:
        raise PromotionError(f"no instance or service named {target!r}; `gatekeeper status` lists them")
    for iid in found:
        stores.verdicts.request_retest(iid)
    print(json.dumps({"retest": found}) if args.json else
          f"retest requested for {len(found)} instance(s): {', '.join(found)}; live ones keep serving meanwhile")
    return EXIT_OK


def cmd_admit(args, stores: Stores) -> int:
    from catalog.model import PASSED, Verdict
    reason = " ".join(args.reason.split())
    if not reason or len(reason) > 200:
        raise ValueError("--reason: say why in 1 to 200 characters; it is kept in the verdict and the history")
    ri = find_instance(stores.instances, args.target) if is_instance_id(args.target) else None
    if ri is None:
        raise PromotionError(f"no instance {args.target!r} is registered; `gatekeeper status` lists them")
    inst, now = ri.instance, time.time()
    verdict = Verdict(inst.id, inst.container_id, "", PASSED, f"forced admission: {reason}", now, now,
                      container_started=inst.started)
    try:
        stores.verdicts.put(verdict)
    except ConsulException as exc:
        if "403" not in str(exc) and "Permission denied" not in str(exc):
            raise
        raise Refused("this token may not write verdicts (the operator's may not, by design); a forced admission "
                      "needs the breakglass token: --consul-token-file .stack/tokens/breakglass.token") from None
    stores.history.add(inst.service, "forced admission", instance=inst.id, version=inst.version, reason=reason,
                       by="operator (break-glass)")
    try:
        policy = stores.policies.get(inst.service)[1]
    except ValueError:
        policy = None
    routed = policy is not None and inst.version in (policy.stable, policy.canary)
    then = ("it takes its share of traffic once its gate is open" if routed else
            f"{inst.version} is not routed: `gatekeeper canary {inst.service} {inst.version}`, then `gatekeeper "
            f"promote {inst.service}`, sends it traffic")
    print(json.dumps({"admitted": inst.id, "version": inst.version, "reason": reason, "routed": routed})
          if args.json else
          f"{inst.id} ({inst.service} {inst.version}) admitted by force: {reason}. gatekeeper opens its gate at "
          f"its next pass; {then}. A retest or re-verification can close it again")
    return EXIT_OK


def cmd_scale(args, stores: Stores) -> int:
    import docker

    from .fleet.autoscaler import scale_by_hand
    from .fleet.swarm import Swarm
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise Unreachable(f"no Docker Engine answers ({exc}); `gatekeeper scale` talks to a Swarm manager's "
                          "engine (DOCKER_HOST)") from None
    svc, message = scale_by_hand(stores, Swarm(client), args.service, args.replicas)
    print(json.dumps({"service": args.service, "swarm_service": svc.name, "previous": svc.replicas,
                      "replicas": args.replicas, "message": message}) if args.json else message)
    return EXIT_OK


COMMANDS = {"run": cmd_run, "status": cmd_status, "why": cmd_why, "promote": cmd_promote,
            "weight": cmd_weight, "abort": cmd_abort, "canary": cmd_canary, "rollback": cmd_rollback,
            "mode": cmd_mode, "wait": cmd_wait, "history": cmd_history, "tests": cmd_tests,
            "retest": cmd_retest, "admit": cmd_admit, "forget": cmd_forget, "scale": cmd_scale}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    consul_address(args)
    as_json = getattr(args, "json", False)

    def fail(code: int, message: str) -> int:
        return emit_error(as_json, message, code, prog="gatekeeper")

    try:
        stores = Stores.connect(args.consul, token=read_token(args.consul_token_file))
        return COMMANDS[args.command](args, stores)
    except StackError as exc:
        return fail(exc.exit_code, str(exc))
    except (requests.ConnectionError, requests.Timeout) as exc:
        return fail(EXIT_UNREACHABLE, consul_unreachable(args.consul, exc))
    except ConsulException as exc:
        return fail(EXIT_UNREACHABLE, consul_refusal(args.consul, exc))
    except ValueError as exc:
        return fail(EXIT_USAGE, str(exc))


if __name__ == "__main__":
    sys.exit(main())
