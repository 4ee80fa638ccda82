"""The labels reference's table of defaults and rules is what the validation answers, and it
names every label the code reads (scripts/labels_reference.py generates it)."""
import ast
import re
import runpy
from pathlib import Path

from catalog import route_settings

ROOT = Path(__file__).resolve().parents[2]
REF = runpy.run_path(str(ROOT / "scripts" / "labels_reference.py"), run_name="labels_reference")


def test_the_rules_block_is_what_the_validation_answers():
    text = REF["PAGE"].read_text()
    assert REF["BLOCK"].search(text), "docs/reference/labels.md has no generated block"
    assert REF["generate"](text) == text, "stale: run `python scripts/labels_reference.py`"


def test_every_label_the_code_reads_has_a_row():
    source = (ROOT / "registrator" / "translate.py").read_text()
    read = {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and re.fullmatch(r"(gatekeeper|proxy)\.[a-z_]+|SERVICE_[A-Z_]+", node.value)}
    read |= {route_settings.LABEL_PREFIX + key for key in route_settings.SETTINGS} | {"gatekeeper.scale"}
    read -= {"SERVICE_IGNORE", "SERVICE_ID", "SERVICE_CHECK_"}   # any value ignores; refused at any value; a prefix
    rows = {label for label, _, _ in REF["LABELS"]}
    assert read - rows == set(), "labels without a row in scripts/labels_reference.py"


def test_a_broken_value_is_refused_with_the_rule_the_table_shows():
    assert REF["rule_of"]("proxy.retries", "11") == "a whole number of retries from 0 (never retry) to 10"
    assert REF["rule_of"]("gatekeeper.mode", "sometimes") == "auto, manual or progressive"
