"""A real Docker SDK client for a socket nothing listens on: its API version is given, so
making it asks nothing, and every call then fails as it does with an engine that is down."""
from __future__ import annotations

from pathlib import Path

import docker


def client_nobody_answers(folder: Path) -> docker.DockerClient:
    return docker.DockerClient(base_url=f"unix://{folder}/docker.sock", version="1.41", timeout=2)
