"""Docker image references, parsed in one place: 'registry:5000/team/demo:v2@sha256:...' ->
repository, name and tag. The registry's port is never mistaken for a tag."""
from __future__ import annotations

from typing import Tuple


def split_image(ref: str) -> Tuple[str, str]:
    """(repository, tag); the tag is '' when the reference has none. A digest is dropped."""
    ref = ref.split("@", 1)[0]
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:                 # no colon, or the colon was the registry's port
        return ref, ""
    return repo, tag


def image_version(ref: str) -> str:
    """The tag ('demo:v2' -> 'v2'), 'latest' without one: registrator's default version."""
    return split_image(ref)[1] or "latest"


def image_name(ref: str) -> str:
    """The last path part without tag ('registry:5000/team/demo:v2' -> 'demo'): the default
    service name, as in gliderlabs/registrator."""
    return split_image(ref)[0].rsplit("/", 1)[-1]
