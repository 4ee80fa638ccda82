"""What every benchmark needs: a Docker client, a Consul server of its own on ports apart from
the demo stack's and the tests', a scratch folder, and a clean-up of its labelled containers."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker

from testbed.processes import ConsulServer
from testbed.stack import TEST_LABEL


def percentile(values, p: float) -> float:
    """The p-th percentile (0-100) by nearest rank: the smallest value with at least p % of the
    values at or below it (of fewer than 100 values, the p99 is the slowest)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def beside(run, baseline: str, contenders, rounds: int) -> dict:
    """Each contender measured right beside the baseline, `rounds` times, the pair's order swapped
    from one round to the next (baseline first, then contender first), so that what the machine
    does meanwhile weighs on both sides of a pair alike; and the contenders' order turned by one
    every two rounds, so that none always runs in the same place of a round (first after a pause,
    or last after the others), each place once with the baseline first and once after it. `run(name)`
    measures one and returns its result; returns {contender: [(contender's result, its baseline's
    result), ...]}, a pair per round."""
    contenders = list(contenders)
    pairs = {name: [] for name in contenders}
    for r in range(rounds):
        turn = (r // 2) % len(contenders)
        for name in contenders[turn:] + contenders[:turn]:
            order = (baseline, name) if r % 2 == 0 else (name, baseline)
            got = {n: run(n) for n in order}
            pairs[name].append((got[name], got[baseline]))
    return pairs


def wrk_missing() -> bool:
    """True, having said how to install it, when wrk is not on this machine."""
    if shutil.which("wrk"):
        return False
    print("wrk is missing: `bash scripts/install.sh bench-tools` installs it", file=sys.stderr)
    return True


def command_line(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser: the first paragraph of its docstring as --help, and --json."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of progress and a summary")
    return p


def with_check(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--check", action="store_true", help="exit 1 when any figure misses its goal")
    return p


def goals_table(rows) -> str:
    """rows: (measure, figure, goal, met or None when the row has no goal) -> a printed table."""
    width = max(len(r[0]) for r in rows)
    fig = max(len(str(r[1])) for r in rows)
    return "\n".join(f"{m:<{width}}  {str(f):<{fig}}  goal {g:<14} {'' if ok is None else ('met' if ok else 'MISSED')}"
                     for m, f, g, ok in rows)


def exit_code(rows, check: bool) -> int:
    missed = [r[0] for r in rows if r[3] is False]
    return 1 if check and missed else 0


def progress(json_mode: bool):
    """`say` for progress lines: printed for people, silent when the output is JSON."""
    return (lambda *a: None) if json_mode else (lambda *a: print(*a, flush=True))


def report(result: dict, json_mode: bool, summary: str = "") -> None:
    """The result as one JSON object for a program, or the summary for people."""
    if json_mode:
        print(json.dumps(result, indent=2))
    elif summary:
        print(summary)


@dataclass
class BenchEnv:
    client: docker.DockerClient
    consul: ConsulServer
    base: Path
    session: str


@contextlib.contextmanager
def bench_env():
    """A Consul of its own, a temporary folder and a session label for containers; all of it
    gone afterwards. The folder (nginx's logs of every proxy measured: hundreds of MB after a
    throughput run) is kept only when the benchmark failed, for a look, and named on stderr."""
    session = "bench" + uuid.uuid4().hex[:6]
    client = docker.from_env(timeout=120)
    base = Path(tempfile.mkdtemp(prefix="proxystack-bench-"))
    env = BenchEnv(client, ConsulServer(base, http_port=18600, port_base=18400).start(), base, session)
    finished = False
    try:
        yield env
        finished = True
    finally:
        for c in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={session}"}, ignore_removed=True):
            c.remove(force=True)
        env.consul.stop()
        if finished:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"the benchmark's files (logs, configs) are kept for a look: {base}", file=sys.stderr)
