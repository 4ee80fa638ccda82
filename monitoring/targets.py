"""Keep Prometheus's file_sd file in step with the metrics endpoints announced in Consul.

    python -m monitoring.targets --consul 127.0.0.1:8500 --consul-token-file T --out targets.json

Follows the `proxystack-metrics` service with a blocking query and rewrites the file (atomically,
only when it changes) with one target group per endpoint: `job` is the component (registrator,
gatekeeper, proxy-reloader), `node` the Consul node. Consul unreachable: the file keeps the last
targets (Prometheus then shows a dead daemon as down, not as gone) and the watch retries.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import List

from catalog.cli import EXIT_OK, EXIT_USAGE, add_consul_options, consul_address
from catalog.consul_client import read_token
from catalog.stores import InstanceStore, Stores
from catalog.stores.proxies import METRICS_SERVICE
from catalog.logs import setup_logging
from catalog.watch import Watch
from catalog.signals import stop_on_signals

log = logging.getLogger("monitoring.targets")


def target_groups(entries: list) -> List[dict]:
    """Consul health entries of proxystack-metrics -> file_sd target groups, sorted."""
    groups = []
    for e in entries:
        svc, node = e.get("Service") or {}, (e.get("Node") or {}).get("Node", "")
        host = svc.get("Address") or (e.get("Node") or {}).get("Address", "")
        component = (svc.get("Meta") or {}).get("component") or "unknown"
        if host and svc.get("Port"):
            groups.append({"targets": [f"{host}:{svc['Port']}"],
                           "labels": {"job": component, "node": node, "consul_service_id": svc.get("ID", "")}})
    return sorted(groups, key=lambda g: (g["labels"]["job"], g["targets"][0]))


def write_if_changed(path: Path, groups: List[dict]) -> bool:
    text = json.dumps(groups, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)        # Prometheus never reads a half-written file
    return True


def follow(instances: InstanceStore, out: Path, stopping: threading.Event, wait: float = 30.0) -> Watch:
    """A blocking-query watch on proxystack-metrics (catalog.watch: index bookkeeping, back-off)
    that rewrites `out` whenever the announced endpoints change."""
    def changed() -> None:
        groups = target_groups(watch.last_data or [])
        if write_if_changed(out, groups):
            log.info("targets: %s", ", ".join(f"{g['labels']['job']} {g['targets'][0]}" for g in groups) or "none")

    watch = Watch(METRICS_SERVICE, lambda index, w: instances.wait_service(METRICS_SERVICE, index, w), changed, wait,
                  stopping)
    return watch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitoring.targets", description=__doc__.split("\n\n")[0])
    add_consul_options(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the file_sd file Prometheus reads")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    args = p.parse_args(argv)
    consul_address(args)
    setup_logging("prometheus-targets", args.verbose)
    try:
        instances = Stores.connect(args.consul, token=read_token(args.consul_token_file)).instances
    except (ValueError, OSError) as exc:
        print(f"monitoring.targets: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    try:
        if not out.exists():
            write_if_changed(out, [])            # Prometheus starts with an empty, valid file
    except OSError as exc:
        print(f"monitoring.targets: --out {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    stopping = threading.Event()
    stop_on_signals(stopping.set)
    log.info("following %s in Consul at %s -> %s", METRICS_SERVICE, args.consul, out)
    follow(instances, out, stopping).start()
    while not stopping.wait(1.0):
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
