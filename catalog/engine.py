"""A Docker Engine client for a daemon that may start before its engine does (a host's boot,
dockerd restarting): wait for the engine, saying so, instead of ending in a traceback. An
address that cannot be an engine's (a bad DOCKER_HOST or --docker, TLS files missing) is
refused at once: waiting would never help."""
from __future__ import annotations

import logging
from typing import Optional

import docker
import docker.errors
import requests

from .retry import backoff

log = logging.getLogger(__name__)


class EngineNotUp(Exception):
    """The engine did not answer the client's first request (its API version)."""


def not_answering(exc: docker.errors.DockerException) -> bool:
    """The SDK wraps a failed first request (the API version) in a plain DockerException whose
    cause is the connection error; an address it cannot parse has no such cause."""
    return isinstance(exc.__cause__, (requests.RequestException, OSError))


def engine_client(base_url: Optional[str] = None, timeout: float = 30.0, attempts: Optional[int] = None,
                  what: str = "the Docker Engine") -> docker.DockerClient:
    """A DockerClient for `base_url` (None: DOCKER_HOST or the local socket) once the engine
    answers; ValueError when the address or its TLS settings cannot work."""
    @backoff(max_wait=10.0, attempts=attempts, on=(EngineNotUp,), what=f"connecting to {what}")
    def connect() -> docker.DockerClient:
        try:
            if base_url:
                return docker.DockerClient(base_url=base_url, timeout=timeout)
            return docker.from_env(timeout=timeout)
        except docker.errors.DockerException as exc:
            if not_answering(exc):
                raise EngineNotUp(f"no answer from {base_url or 'DOCKER_HOST or the local socket'}: "
                                  f"{exc.__cause__}") from None
            raise ValueError(f"{base_url or 'DOCKER_HOST'}: not a Docker Engine address this client can use: "
                             f"{exc}") from None
    return connect()
