"""The labels reference's table of defaults and rules, generated from the validation itself.

    python scripts/labels_reference.py          rewrite the block in docs/reference/labels.md
    python scripts/labels_reference.py --check  exit 1 when it differs from what the code says

Each rule is the one a container meets when its value is refused: the generator gives
registrator's translation (registrator.translate, on catalog.validation and
catalog.route_settings) a value that breaks the rule and writes down the reason it answers,
word for word. `gatekeeper.scale`, read from Swarm services, is asked of its parser. The block is
marked `<!-- labels:rules -->` ... `<!-- /labels -->`.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "labels.md"
BLOCK = re.compile(r"(<!-- labels:rules -->\n)(.*?)(<!-- /labels -->)", re.S)

# label, its default (in words), a value that breaks its rule
LABELS = (
    ("SERVICE_NAME", "a Swarm task's service name, else the image's name", "Web_1"),
    ("SERVICE_8080_NAME", "with several ports, `<name>-<port>`", "Web_1"),
    ("SERVICE_TAGS", "none", "a b"),
    ("SERVICE_CHECK_HTTP", "no HTTP check", "health"),
    ("SERVICE_CHECK_TCP", "no TCP check", "maybe"),
    ("SERVICE_CHECK_INTERVAL", "`5s`", "5"),
    ("SERVICE_CHECK_TIMEOUT", "`2s`", "2 s"),
    ("gatekeeper.tests", "the service's default test image (`gatekeeper tests`)", "demo test"),
    ("gatekeeper.version", "the image's tag (`latest` without one)", "-v1"),
    ("gatekeeper.mode", "the service's mode (`auto` for a new one)", "sometimes"),
    ("gatekeeper.analysis", "the service's settings; a new service's: {analysis}", "fast"),
    ("gatekeeper.scale", "no autoscaling; the settings a label leaves out: {scaling}", "fast"),
    ("proxy.path", "`/<service>/`", "demo"),
    ("proxy.host", "none: the default host", "Demo_Host"),
    ("proxy.strip_prefix", "`false`", "yes"),
    ("proxy.timeout", "proxy-reloader's `--read-timeout` (30 s)", "0s"),
    ("proxy.connect_timeout", "`2s`", "0s"),
    ("proxy.body_size", "`1m`", "2g"),
    ("proxy.buffering", "`on`", "no"),
    ("proxy.retries", "`2`", "11"),
    ("proxy.allow", "every client", "10.0.0.1/8"),
    ("proxy.rate_limit", "no limit", "fast"),
    ("proxy.protocol", "`http`", "http2"),
    ("proxy.https", "`redirect` when the host has a certificate and the proxy a TLS listener, else served", "always"),
    ("proxy.hsts", "no header", "forever"),
)


def rule_of(label: str, bad: str) -> str:
    """What a container with `label=bad` is told, after the label's name and value."""
    sys.path.insert(0, str(ROOT))
    from catalog.validation import InvalidValue, parse_scale_label
    from registrator.docker_source import Container, PublishedPort
    from registrator.translate import Rejected, Settings, instances_for
    if label == "gatekeeper.scale":                  # a Swarm service's label, read by gatekeeper
        try:
            parse_scale_label(bad)
        except InvalidValue as exc:
            return exc.rule
        raise AssertionError(f"{label}={bad!r} was accepted")
    labels = {"SERVICE_NAME": "demo", label: bad}
    if label.startswith("SERVICE_CHECK_") and label not in ("SERVICE_CHECK_HTTP", "SERVICE_CHECK_TCP"):
        labels["SERVICE_CHECK_HTTP"] = "/health"
    container = Container(id="c" * 64, name="web1", image="demo:v1", running=True, labels=labels, env={},
                          ports=(PublishedPort(8080, "tcp", "127.0.0.1", 32768),))
    try:
        instances_for(container, Settings(hostname="h"))
    except Rejected as exc:
        return re.sub(r"^.*? must be ", "", exc.reason, count=1)
    raise AssertionError(f"{label}={bad!r} was accepted")


def settings_rules(label: str) -> str:
    """Each setting's own rule, for the labels that hold several (as their parser checks them)."""
    from catalog.validation import ANALYSIS_RULES, SCALE_RULES
    rules = {"gatekeeper.analysis": ANALYSIS_RULES, "gatekeeper.scale": SCALE_RULES}.get(label)
    return "; ".join(f"{key}: {rule[-1]}" for key, rule in rules.items()) if rules else ""


def analysis_defaults() -> str:
    from dataclasses import asdict
    from catalog.model import Analysis
    return ",".join(f"{key}={value:g}" for key, value in asdict(Analysis()).items())


def scaling_defaults() -> str:
    from catalog.model import Scaling
    from catalog.validation import SCALE_RULES
    field = {"p99": "p99_ms"}                        # the label's key -> the model's field
    return ",".join(f"{key}={getattr(Scaling(), field.get(key, key)):g}" for key in SCALE_RULES)


def table() -> str:
    rows = ["| label | default | a value must be |", "|---|---|---|"]
    for label, default, bad in LABELS:
        rule = rule_of(label, bad)
        if settings_rules(label):
            rule += ". " + settings_rules(label)
        rule = rule.replace("|", "\\|")
        default = default.format(analysis=analysis_defaults(), scaling=scaling_defaults())
        rows.append(f"| `{label}` | {default} | {rule} |")
    return "\n".join(rows) + "\n"


def generate(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table() + m.group(3), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when the page's block is stale")
    args = p.parse_args(argv)
    text = PAGE.read_text()
    if not BLOCK.search(text):
        print(f"{PAGE}: no <!-- labels:rules --> block", file=sys.stderr)
        return 1
    new = generate(text)
    if args.check:
        if new != text:
            print(f"{PAGE}: the labels' rules are stale: run `python scripts/labels_reference.py`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        PAGE.write_text(new)
        print(f"{PAGE.relative_to(ROOT)}: labels' rules updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
