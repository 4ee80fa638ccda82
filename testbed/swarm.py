"""Swarm services for tests, made with the docker CLI as docs/guides/swarm.md shows, removed by label."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

from catalog.model import GATE_MIRROR_HEALTH_CMD

ROOT = Path(__file__).resolve().parents[1]
TEST_LABEL = "proxystack.test"
E2E_LABEL = "proxystack.e2e"


def docker(*args: str, timeout: float = 120) -> str:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


def ensure_swarm() -> bool:
    """Swarm mode on, as `scripts/stack.sh swarm` makes it: a single-node swarm listening on
    127.0.0.1 only, without the routing mesh; True when this call turned it on."""
    if docker("info", "--format", "{{.Swarm.LocalNodeState}}") == "active":
        return False
    subprocess.run(["bash", str(ROOT / "scripts" / "stack.sh"), "swarm"], check=True, capture_output=True,
                   text=True, timeout=120)
    return True


def exposed_listeners() -> List[str]:
    """Sockets listening beyond loopback that belong to the Docker Engine: dockerd's own, and the
    kernel's VXLAN port of Swarm's overlay networks (4789/udp, no process)."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, timeout=10).stdout
    exposed = []
    for line in out.splitlines():
        fields = line.split()
        local = fields[4] if len(fields) > 4 else ""
        if ("dockerd" in line or local.endswith(":4789")) and not local.startswith(("127.", "[::1]")):
            exposed.append(line.strip())
    return exposed


def gated_service_args(name: str, session: str, replicas: int, image: str, *extra: str,
                       start_period: str = "120s") -> List[str]:
    """`docker service create` for a service whose every task passes the gate before traffic
    (docs/guides/swarm.md)."""
    return ["service", "create", "--detach", "--name", name, "--replicas", str(replicas),
            "--publish", "mode=host,target=8080",
            "--container-label", f"SERVICE_NAME={name}", "--container-label", "gatekeeper.tests=demo-test:latest",
            "--container-label", f"proxy.host={name}.test", "--container-label", "proxy.path=/demo/",
            "--container-label", f"{TEST_LABEL}={session}", "--container-label", f"{E2E_LABEL}={session}",
            "--health-cmd", GATE_MIRROR_HEALTH_CMD, "--health-interval", "1s", "--health-retries", "3",
            "--health-start-period", start_period,
            "--update-order", "start-first", "--update-failure-action", "rollback", "--restart-delay", "1s",
            "--no-resolve-image",
            "--label", f"{TEST_LABEL}={session}", *extra, image]


def remove_services(session: str) -> None:
    ids = docker("service", "ls", "-q", "--filter", f"label={TEST_LABEL}={session}").split()
    if ids:
        docker("service", "rm", *ids)


def tasks(name: str) -> List[dict]:
    """Running tasks of a service: [{'image':..., 'state':..., 'id':...}]."""
    out = docker("service", "ps", name, "--filter", "desired-state=running", "--no-trunc",
                 "--format", "{{.ID}} {{.Image}} {{.CurrentState}}")
    return [dict(zip(("id", "image", "state"), line.split(" ", 2))) for line in out.splitlines() if line]
