"""Runs nginx's Lua side (its pure modules, under luajit, no nginx) over cases: tests/lua/run_cases.lua."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LUA_DIR = ROOT / "proxy_reloader" / "lua"


def run_lua(kind: str, cases, tmp_path: Path):
    """The Lua side's answer (decoded JSON) to `cases` of `kind`: pushes, routes, split or buckets."""
    luajit = shutil.which("luajit")
    assert luajit, "luajit is missing: `bash scripts/install.sh all` installs it (Debian's luajit2)"
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(cases))
    out = subprocess.run([luajit, str(ROOT / "tests" / "lua" / "run_cases.lua"), str(LUA_DIR), kind, str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
