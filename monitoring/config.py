"""The Prometheus configuration the stack runs with.

    python -m monitoring.config --targets FILE [--rules R] [--listen 127.0.0.1:9090] --out F

Targets come from the file monitoring.targets keeps (each daemon's metrics endpoint, labelled
with its component as `job`); the rules are monitoring/rules.yml.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RULES = Path(__file__).resolve().parent / "rules.yml"


def render(targets: str, rules: str = str(RULES), interval: str = "2s", listen: str = "") -> str:
    """YAML for Prometheus 2.x (written as JSON, which YAML reads)."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [rules],
        "scrape_configs": [{"job_name": "proxystack",
                            "file_sd_configs": [{"files": [targets], "refresh_interval": "30s"}]}]
        + ([{"job_name": "prometheus", "static_configs": [{"targets": [listen]}]}] if listen else []),
    }
    return json.dumps(config, indent=2) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitoring.config", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", required=True, help="the file_sd file monitoring.targets writes")
    p.add_argument("--rules", default=str(RULES), help="rule file (default: monitoring/rules.yml)")
    p.add_argument("--interval", default="2s", help="scrape and rule evaluation interval (default %(default)s)")
    p.add_argument("--listen", default="", help="Prometheus's own address, to scrape itself too")
    p.add_argument("--out", required=True, help="where to write the configuration")
    args = p.parse_args(argv)
    try:
        Path(args.out).write_text(render(args.targets, args.rules, args.interval, args.listen))
    except OSError as exc:
        print(f"monitoring.config: --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
