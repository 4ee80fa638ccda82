"""build-and-push: a service's image and its integration-test image, tagged with the version,
built (the service's unit tests run inside its build) and pushed to a registry.

The source folder holds `Dockerfile` (the service; it takes BASE_IMAGE and VERSION) and
`Dockerfile.test` (its integration tests; they take URL). A wheelhouse, when given, is copied
into the build context as `wheels/` so that no build downloads anything.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import docker

from catalog.errors import Refused
from catalog.images import split_image

from catalog.validation import check

REGISTRY = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[a-z0-9._-]+)*")


class BuildFailed(Refused):
    """A build or a push failed; str() names the image and ends with the build's last lines."""


@dataclass
class Release:
    service: str
    version: str
    image: str
    tests_image: str
    digests: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def check_registry(registry: str) -> str:
    if not REGISTRY.fullmatch(registry or ""):
        raise ValueError(f"registry {registry!r} is not HOST[:PORT][/PATH] (for example 127.0.0.1:5000), without a scheme")
    return registry


def git_version(source: Path) -> str:
    """The commit the source is at (12 hex digits), with '-dirty' when it has local changes."""
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ValueError(f"cannot run git to name the version ({exc}); give --version") from None
    sha = git("rev-parse", "--short=12", "HEAD")
    if sha.returncode != 0:
        raise ValueError(f"{source} is not in a git checkout; give --version")
    dirty = git("status", "--porcelain", "--", ".").stdout.strip()
    return sha.stdout.strip() + ("-dirty" if dirty else "")


def stage(source: Path, wheelhouse: Optional[Path], into: Path) -> Path:
    for name in ("Dockerfile", "Dockerfile.test"):
        if not (source / name).is_file():
            raise ValueError(f"{source} has no {name}; a service folder needs Dockerfile and Dockerfile.test")
    ctx = into / "context"
    shutil.copytree(source, ctx, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "wheels"))
    if wheelhouse:
        if not wheelhouse.is_dir():
            raise ValueError(f"wheelhouse {wheelhouse} is not a folder")
        shutil.copytree(wheelhouse, ctx / "wheels")
    else:
        (ctx / "wheels").mkdir()
    return ctx


def build_and_push(client: docker.DockerClient, source: Path, *, registry: str, service: str, version: str,
                   base_image: str, wheelhouse: Optional[Path] = None, build_args: Optional[dict] = None,
                   push: bool = True, say: Callable[[str], None] = print) -> Release:
    check("service", service)
    check("version", version)
    check_registry(registry)
    release = Release(service, version, f"{registry}/{service}:{version}", f"{registry}/{service}-test:{version}")
    with tempfile.TemporaryDirectory(prefix="build-and-push-") as tmp:
        ctx = stage(source, wheelhouse, Path(tmp))
        plan = [(release.image, "Dockerfile", {"VERSION": version, **(build_args or {})}),
                (release.tests_image, "Dockerfile.test", {})]
        for tag, dockerfile, args in plan:
            say(f"building {tag} from {source.name}/{dockerfile}"
                + (" (its unit tests run in the build)" if dockerfile == "Dockerfile" else ""))
            try:
                client.images.build(path=str(ctx), dockerfile=dockerfile, tag=tag, rm=True, forcerm=True,
                                    buildargs={"BASE_IMAGE": base_image, **args})
            except docker.errors.BuildError as exc:
                tail = "".join(chunk.get("stream", "") or chunk.get("error", "") for chunk in exc.build_log)
                tail = "\n".join(tail.strip().splitlines()[-25:])
                raise BuildFailed(f"building {tag} failed: {exc.msg}\n{tail}") from None
    if push:
        for tag in (release.image, release.tests_image):
            say(f"pushing {tag}")
            release.digests[tag] = push_image(client, tag)
    return release


def push_image(client: docker.DockerClient, tag: str) -> str:
    repo, version = split_image(tag)
    digest = ""
    for line in client.api.push(repo, version or None, stream=True, decode=True):
        if line.get("error"):
            raise BuildFailed(f"pushing {tag} failed: {line['error']}")
        digest = (line.get("aux") or {}).get("Digest", digest)
    if not digest:
        raise BuildFailed(f"pushing {tag}: the registry confirmed no digest")
    return digest
