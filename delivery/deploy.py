"""deploy: run a released version on an engine and let the gate decide.

Pulls the service image and its test image on the target engine (from the registry as that
engine sees it), runs the container with the labels registrator and gatekeeper read, then waits
for gatekeeper's verdict. A version whose tests fail never receives a request through the proxy;
its container is removed (unless --keep-failed) and the old version goes on serving.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import docker

from catalog.errors import BadInput, Unreachable
from catalog.images import image_version, split_image

from catalog.stores import PolicyStore, Stores
from catalog.validation import InvalidValue, check
from gatekeeper import WAIT_FAILED, WAIT_OK, WAIT_TIMEOUT, wait_for_version


class DeployError(Unreachable):
    """The deploy could not be carried out; nothing was started, or what was is removed."""


class NameTaken(DeployError, BadInput):
    """Another container already has the deployment's name: bad input, nothing was changed."""
    exit_code = BadInput.exit_code


@dataclass
class Deployment:
    service: str
    version: str
    image: str
    tests_image: str
    name: str
    labels: Dict[str, str] = field(default_factory=dict)
    timeout: float = 300.0
    keep_failed: bool = False

    @classmethod
    def of(cls, service: str, image: str, tests_image: Optional[str] = None, version: Optional[str] = None,
           name: Optional[str] = None, **kw) -> "Deployment":
        check("service", service)
        check("image", image)
        version = check("version", version or image_version(image))
        if tests_image is None:
            tests_image = f"{split_image(image)[0]}-test:{version}"
        check("image", tests_image)
        return cls(service, version, image, tests_image, check("container_name", name or f"{service}-{version}"), **kw)

    def container_labels(self) -> Dict[str, str]:
        return {**self.labels, "SERVICE_NAME": self.service, "gatekeeper.tests": self.tests_image,
                "gatekeeper.version": self.version}


def pull(client: docker.DockerClient, ref: str, say) -> "docker.models.images.Image":
    say(f"pulling {ref}")
    repo, tag = split_image(ref)
    try:
        return client.images.pull(repo, tag=tag or "latest")
    except docker.errors.APIError as exc:
        raise DeployError(f"the engine could not pull {ref}: {exc.explanation or exc}; "
                          "was it pushed (build-and-push), and can the engine reach that registry?") from None


def start(client: docker.DockerClient, d: Deployment, say):
    image = pull(client, d.image, say)
    pull(client, d.tests_image, say)
    try:
        existing = client.containers.get(d.name)
    except docker.errors.NotFound:
        existing = None
    if existing is not None:
        if existing.image.id == image.id and existing.status == "running":
            say(f"{d.name} already runs {d.image}; waiting for its verdict")
            return existing
        raise NameTaken(f"a container named {d.name} already exists ({existing.status}, image "
                          f"{existing.image.tags or existing.image.short_id}); remove it or give --name")
    container = client.containers.run(d.image, name=d.name, detach=True, publish_all_ports=True,
                                      labels=d.container_labels(), restart_policy={"Name": "unless-stopped"})
    container.reload()
    ports = ", ".join(f"{p} -> {b[0]['HostIp']}:{b[0]['HostPort']}" for p, b in
                      (container.attrs["NetworkSettings"]["Ports"] or {}).items() if b)
    say(f"started {d.name} ({container.short_id}){': ' + ports if ports else ''}")
    return container


def deploy(client: docker.DockerClient, stores: Stores, d: Deployment, say: Callable[[str], None] = print) -> int:
    """WAIT_OK (0) when admitted and routed, WAIT_FAILED (1) when its tests failed, WAIT_TIMEOUT (4)."""
    container = start(client, d, say)
    outcome = wait_for_version(stores, d.service, d.version, d.timeout, say=say)
    if outcome != WAIT_OK and not d.keep_failed:
        container.remove(force=True)
        say(f"removed {d.name}; {serving(stores.policies, d.service)}")
    return outcome


def serving(policies: PolicyStore, service: str) -> str:
    try:
        policy = policies.get(service)[1]
    except InvalidValue:
        policy = None
    if policy is None or not policy.stable:
        return f"{service} has no stable version"
    return f"{service} still serves {policy.stable}"


__all__ = ["Deployment", "DeployError", "deploy", "WAIT_OK", "WAIT_FAILED", "WAIT_TIMEOUT"]
