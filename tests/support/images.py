"""Small images built on the fly for tests, from a Dockerfile text (no context needed)."""
from __future__ import annotations

import io
import tarfile


def build_image(docker_client, tag: str, dockerfile: str, labels: dict) -> str:
    raw = dockerfile.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    buf.seek(0)
    docker_client.images.build(fileobj=buf, custom_context=True, tag=tag, labels=labels, rm=True, forcerm=True)
    return tag
