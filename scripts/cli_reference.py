"""The documentation's command reference, generated from the tools' own argument parsers.

    python scripts/cli_reference.py          rewrite the generated blocks in README.md and docs/
    python scripts/cli_reference.py --check  exit 1 when any of them differs from the parsers

A Markdown file (README.md, or any under docs/) marks each generated block with
`<!-- cli:KIND:TOOL -->` ... `<!-- /cli -->`, KIND being `usage` (every command's usage line) or
`help` (every command's full --help). The full reference is docs/reference/cli.md.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- cli:(usage|help):([a-z-]+) -->\n)(.*?)(<!-- /cli -->)", re.S)
WIDTH = "100"


def parsers() -> Dict[str, argparse.ArgumentParser]:
    os.environ["COLUMNS"] = WIDTH            # argparse wraps to the terminal; the docs need one width
    sys.path.insert(0, str(ROOT))
    from dashboard.__main__ import build_parser as dashboard
    from delivery.__main__ import build_parser as delivery
    from gatekeeper.__main__ import build_parser as gatekeeper
    from proxy_reloader.__main__ import build_parser as proxy_reloader
    from proxy_reloader.cert_cli import build_parser as proxy_reloader_cert
    from registrator.__main__ import build_parser as registrator
    return {"registrator": registrator(), "gatekeeper": gatekeeper(), "proxy-reloader": proxy_reloader(),
            "proxy-reloader-cert": proxy_reloader_cert(), "delivery": delivery(), "dashboard": dashboard()}


def commands(parser: argparse.ArgumentParser) -> List[Tuple[str, argparse.ArgumentParser]]:
    """The parser itself, then each subcommand's parser, in the order they were added."""
    found = [("", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices.items())
    return found


def usage_block(parser: argparse.ArgumentParser) -> str:
    lines = []
    for name, p in commands(parser):
        if name == "" and len(commands(parser)) > 1:
            continue                          # the subcommands' lines say it all
        first, *rest = p.format_usage().rstrip().splitlines()
        lines.append(first.replace("usage: ", "", 1).replace(" [-h]", ""))
        lines += [line[len("usage: "):] for line in rest]
    return "```\n" + "\n".join(lines) + "\n```\n"


def help_block(parser: argparse.ArgumentParser) -> str:
    parts = []
    for name, p in commands(parser):
        parts.append(("$ " + p.prog + " --help\n") + p.format_help().rstrip())
    return "```\n" + "\n\n".join(parts) + "\n```\n"


def documents() -> List[Path]:
    """Every Markdown file that may hold generated blocks: README.md, then docs/ in path order."""
    return [README] + sorted(DOCS.rglob("*.md"))


def generate(text: str) -> str:
    found = parsers()

    def block(m: re.Match) -> str:
        kind, tool = m.group(2), m.group(3)
        if tool not in found:
            raise SystemExit(f"unknown tool in {m.group(1).strip()}: one of {', '.join(found)}")
        body = usage_block(found[tool]) if kind == "usage" else help_block(found[tool])
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(block, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a generated block is not up to date")
    args = ap.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        new = generate(text)
        if new == text:
            continue
        name = str(path.relative_to(ROOT))
        stale.append(name)
        if not args.check:
            path.write_text(new)
            print(f"{name}: command reference updated")
    if args.check:
        if stale:
            print(f"{', '.join(stale)}: the command reference differs from the parsers: run `make cli-reference`",
                  file=sys.stderr)
            return 1
        print("the command reference matches every --help")
    return 0


if __name__ == "__main__":
    sys.exit(main())
