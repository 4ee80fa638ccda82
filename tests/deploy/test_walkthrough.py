"""A new operator's first hour, as docs/getting-started.md tells it, from a fresh clone of this
repository: every command of the guide run in its order (but `make test`, which is what runs
this), and what the guide says of each checked from outside: `make demo` tells its story and
leaves the stack serving, the first deploy of your own container is tested and served,
`make status` lists what runs and `make stop` stops it."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from testbed.processes import ROOT

pytestmark = pytest.mark.e2e

GUIDE = ROOT / "docs" / "getting-started.md"
DEMO_LABEL = "proxystack.demo"          # what make stop removes (scripts/stack.sh)


def guide_blocks() -> list:
    """The guide's shell blocks, each a list of its command lines."""
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S)
    return [[line for line in b.splitlines() if line.strip() and not line.startswith("#")] for b in blocks]


def sh(clone, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_TOKEN")}
    return subprocess.run(["bash", "-c", command], cwd=clone, capture_output=True, text=True, timeout=timeout,
                          env=env)


def labelled(command: str) -> str:
    """A `docker run` of the guide with the demo's own label added, so that `make stop` removes
    its container as it removes the demo's; nothing else changes (the tests' label would keep
    it out: make demo's registrator runs with --exclude-label proxystack.test)."""
    words = shlex.split(command)
    if words[:2] != ["docker", "run"]:
        return command
    return shlex.join(words[:2] + ["--label", f"{DEMO_LABEL}=1"] + words[2:])


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None, None


@pytest.fixture
def clone(tmp_path, docker_client):
    path = tmp_path / "proxystack"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True, timeout=120)
    yield path
    sh(path, "make stop", timeout=180)                       # whatever a failed step left running


@pytest.mark.timeout(1500)       # make demo from a fresh clone: its venv, wheels, images and the whole story
def test_the_getting_started_guide_from_a_fresh_clone(clone, docker_client):
    first, deploy = guide_blocks()
    assert first == ["make demo", "make test"], first
    text = GUIDE.read_text()
    assert "`make stop`" in text and "`make status`" in text

    demo = sh(clone, "make demo", timeout=1400)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-2000:]
    for step in ("==> Deploy demo v1", "==> Deploy demo v2", "==> Deploy a broken build (v3)",
                 "progressive mode rolls it back", "==> Swarm"):
        assert step in demo.stdout, f"make demo did not show {step!r}:\n{demo.stdout[-3000:]}"
    assert re.search(r"requests that reached v3 through the proxy: 0\b", demo.stdout), demo.stdout[-3000:]
    assert get("http://127.0.0.1:8000/demo/1")[0] == 200, "the demo is served when make demo ends"
    # the dashboard make demo started and printed: the viewer's token sees demo, read-only
    assert "http://127.0.0.1:8005/" in demo.stdout
    viewer = (clone / ".stack" / "tokens" / "viewer.token").read_text().strip()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open("http://127.0.0.1:8005/login", data=f"token={viewer}".encode(), timeout=10) as r:
        page = r.read().decode()
    assert 'data-service="demo"' in page and "(read-only)" in page, page[-2000:]

    # Deploy your own container: the guide's block, as written (one shell, so its export holds)
    result = sh(clone, "set -e\n" + "\n".join(labelled(c) for c in deploy), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "service demo" in result.stdout, result.stdout
    [mine] = [line for line in deploy if line.startswith("docker run")]
    [container_id] = re.findall(r"^[0-9a-f]{64}$", result.stdout, re.M)      # what docker run -d printed
    name = docker_client.containers.get(container_id).name
    deadline = time.monotonic() + 120
    status = rows = None
    while time.monotonic() < deadline:
        out = sh(clone, "CONSUL_HTTP_TOKEN_FILE=.stack/tokens/operator.token .venv/bin/gatekeeper status demo --json")
        status = json.loads(out.stdout) if out.returncode == 0 else None
        rows = status["services"][0]["instances"] if status else []
        if [r["container"] for r in rows if r["serving"]] == [name] and \
                get("http://127.0.0.1:8000/demo/1")[1] == {"id": 1, "rec": 7671, "version": "v2"}:
            break
        time.sleep(1)
    else:
        pytest.fail(f"{mine!r} was not the one instance tested and served within 120 s: {json.dumps(rows)[:2000]}")

    listed = sh(clone, "make status")
    assert listed.returncode == 0 and "consul" in listed.stdout and "gatekeeper" in listed.stdout, listed.stdout
    stopped = sh(clone, "make stop", timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert get("http://127.0.0.1:8000/demo/1") == (None, None), "make stop leaves no proxy running"
    assert get("http://127.0.0.1:8500/v1/status/leader") == (None, None), "nor Consul"
    assert get("http://127.0.0.1:8005/healthz") == (None, None), "nor the dashboard"
    assert not docker_client.containers.list(all=True, filters={"id": container_id}), "nor the container"
