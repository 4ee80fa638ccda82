"""Mutation score of the decision modules, per module, beside the goal.

    python scripts/mutation_score.py [--check]     (after `mutmut run`; `make mutation` does both)

A mutant is killed when a unit test fails with it, or runs past mutmut's time limit with it (the
tests did not pass: a loop that no longer ends, a wait that no longer returns); "no tests" (no
test even runs the mutated line) counts as not killed. Goals: 90 % of all mutants, and 85 % of each module's (a module's
weak tests do not hide behind the others' strong ones).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

GOAL = 0.90
FLOOR = 0.85          # each module
ROOT = Path(__file__).resolve().parent.parent


def results() -> dict:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "mutmut"), "results", "--all", "true"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    per_module: dict = defaultdict(Counter)
    for line in out.splitlines():
        m = re.match(r"\s*([\w.]+?)\.(?:xǁ\w+ǁ)?\w+__mutmut_\d+: (.+)$", line.strip())
        if m:
            module = m.group(1).split(".x")[0]
            status = m.group(2).strip()
            per_module[module]["killed" if status == "timeout" else status] += 1
    return per_module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 when the total is below {GOAL:.0%} or a module below {FLOOR:.0%}")
    args = ap.parse_args(argv)
    per_module = results()
    if not per_module:
        print("no mutmut results: run `mutmut run` first (make mutation)", file=sys.stderr)
        return 2
    total, below = Counter(), []
    print(f"{'module':<36} {'killed':>7} {'mutants':>8} {'score':>7}   floor {FLOOR:.0%}")
    for module, counts in sorted(per_module.items()):
        n = sum(counts.values())
        total.update(counts)
        score = counts["killed"] / n
        if score < FLOOR:
            below.append(module)
        print(f"{module:<36} {counts['killed']:>7} {n:>8} {score:>7.1%}   {'met' if score >= FLOOR else 'MISSED'}")
    n = sum(total.values())
    score = total["killed"] / n
    print(f"{'all decision modules':<36} {total['killed']:>7} {n:>8} {score:>7.1%}   goal >= {GOAL:.0%}: "
          f"{'met' if score >= GOAL else 'MISSED'}")
    if below:
        print(f"below the {FLOOR:.0%} floor: {', '.join(below)}")
    return 1 if args.check and (score < GOAL or below) else 0


if __name__ == "__main__":
    sys.exit(main())
