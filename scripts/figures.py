"""Re-measure every figure docs/measurements.md shows and rewrite its tables from the results.

Runs each benchmark in turn (`--json`; they share ports, so never two at once), then replaces
the text between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->` in docs/measurements.md with that
benchmark's table: each figure beside its goal, the date, the commit, the machine's size and
the command that reproduces it. A benchmark that fails leaves its table as it was and is named
on stderr. Exit 0 when every benchmark ran (and, with --check, met every goal), else 1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = ROOT / "docs" / "measurements.md"

# name -> (module, arguments, what it measures); the order of docs/measurements.md.
BENCHES: Dict[str, tuple] = {
    "lead-time": ("bench.deploy_lead_time", ["--runs", "5"], "deploy lead time and failed requests during a switch"),
    "delivery": ("bench.delivery_bench", ["--runs", "5"], "build-and-push and deploy over TLS through the gate"),
    "proxy": ("bench.proxy_bench", ["--deploys", "20", "--services", "1000"],
              "proxy-reloader and nginx: deploys under keep-alive load, throughput, big catalogs"),
    "proxy-cost": ("bench.proxy_cost_bench", ["--rounds", "12"],
                   "where the proxy's CPU per request goes: the stack's Lua, the Lua balancer, the rest"),
    "tls": ("bench.tls_bench", ["--rounds", "10", "--changes", "20"],
            "HTTPS: keep-alive and new-handshake throughput vs a hand-written TLS nginx, certificate change -> served"),
    "promotion": ("bench.promotion_bench", ["--runs", "10"], "gate pass and promote -> proxied"),
    "backlog": ("bench.backlog_bench", ["--instances", "10000", "--containers", "5"],
                "a backlog of 10,000 instances: a new container's test start, a gate change -> nginx"),
    "analysis": ("bench.analysis_bench", ["--runs", "3"],
                 "progressive mode: breach -> rollback, decision latency, errors before a rollback"),
    "scaling": ("bench.scaling_bench", ["--runs", "3"],
                "Swarm scaling through the gate, unhealthy -> replaced, the autoscaler"),
    "cluster": ("bench.cluster_bench", ["--runs", "3"],
                "several hosts: the Consul leader killed, a host killed, registrations, lead time across hosts"),
    "fleet": ("bench.fleet_bench", ["--runs", "5"], "20 agents, 5,000 instances churned: propagation, server CPU, memory, reads"),
    "registrator": ("bench.registrator_bench", ["--starts", "100", "--containers", "200"],
                    "registration latency, resync, stop -> out of traffic"),
    "dashboard": ("bench.dashboard_bench", ["--services", "100", "--pages", "10", "--idle", "120"],
                  "the dashboard: open pages left idle, a change -> the page, pages served"),
}
WITHOUT_ACLS = {"fleet"}          # benchmarks whose Consul runs without ACLs
WITHOUT_CONSUL = {"proxy-cost"}   # benchmarks of nginx alone


def machine() -> str:
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    return f"{os.cpu_count()} CPUs, {mem_kib / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}"


def commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    # docs/measurements.md is what this script rewrites: its own changes are not changes to what was measured
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)docs/measurements.md"], capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty else "")


def run_bench(name: str) -> Optional[dict]:
    module, args, _ = BENCHES[name]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args, "--json"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took = time.monotonic() - started
    try:
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        result = None
    if proc.returncode != 0 or not result or "goals" not in result:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(f"figures: {name} failed (exit {proc.returncode}) after {took:.0f} s:\n{tail}", file=sys.stderr)
        return None
    result["seconds"] = round(took)
    return result


def table(name: str, result: dict, when: str, where: str) -> str:
    module, args, _ = BENCHES[name]
    goals: List[dict] = result["goals"]
    acls = ("no Consul" if name in WITHOUT_CONSUL else
            "ACLs off (the fleet's own Consul)" if name in WITHOUT_ACLS else "ACLs on")
    command = " ".join([".venv/bin/python", "-m", module, *args, "--check"])
    lines = [f"Measured {when} on {where}, {acls}, by `make figures` (this table alone: `{command}`):", "",
             "| measure | figure | goal | |", "|---|---|---|---|"]
    for g in goals:
        met = "" if g["met"] is None else ("met" if g["met"] else "**missed**")
        goal = (g["goal"] or "").replace("<=", "≤").replace(">=", "≥")
        lines.append(f"| {g['measure']} | {g['figure']} | {goal} | {met} |")
    return "\n".join(lines)


def rewrite(doc: str, name: str, block: str) -> str:
    begin, end = f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"figures: docs/measurements.md has no {begin} ... {end} block; add one where the table belongs")
    return pattern.sub(lambda _: f"{begin}\n{block}\n{end}", doc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", choices=sorted(BENCHES), help="measure only this one (repeatable)")
    p.add_argument("--check", action="store_true", help="exit 1 when any figure misses its goal")
    p.add_argument("--json", action="store_true", help="also print every benchmark's result as one JSON object")
    args = p.parse_args(argv)
    names = args.only or list(BENCHES)
    when, where = datetime.date.today().isoformat(), f"{machine()}, commit {commit()}"
    results, failed = {}, []
    for i, name in enumerate(names, 1):
        print(f"figures: [{i}/{len(names)}] {name}: {BENCHES[name][2]} ...", file=sys.stderr, flush=True)
        result = run_bench(name)
        if result is None:
            failed.append(name)
            continue
        results[name] = result
        missed = [g["measure"] for g in result["goals"] if g["met"] is False]
        print(f"figures: {name} done in {result['seconds']} s; "
              + (f"missed: {'; '.join(missed)}" if missed else "every goal met"), file=sys.stderr, flush=True)
    doc = MEASUREMENTS.read_text()
    for name, result in results.items():
        doc = rewrite(doc, name, table(name, result, when, where))
    MEASUREMENTS.write_text(doc)
    if args.json:
        print(json.dumps({"date": when, "machine": where, "results": results, "failed": failed}, indent=2))
    missed = any(g["met"] is False for r in results.values() for g in r["goals"])
    print(f"figures: docs/measurements.md rewritten for {', '.join(results) or 'nothing'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
