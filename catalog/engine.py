"""A Docker Engine client for a daemon that may start before its engine does (a host's boot,
dockerd restarting): wait for the engine, saying so, instead of ending in a traceback. What
waiting cannot mend is refused at once (ValueError): an address that cannot be an engine's (a
bad DOCKER_HOST or --docker, TLS files missing), a socket this user may not open, an address
where something else than an engine answers."""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import docker
import docker.errors
import requests

from .retry import backoff

log = logging.getLogger(__name__)


class EngineNotUp(Exception):
    """The engine did not answer the client's first request (its API version)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what caused it, and the exceptions in its arguments (urllib3 puts the
    socket's error there), each once."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__, *e.args) if isinstance(x, BaseException))


def not_up(exc: BaseException) -> bool:
    """The engine is not there yet (nothing listens, the connection was refused or timed out),
    as opposed to an answer or a refusal that will be the same next time."""
    chain = list(_chain(exc))
    if any(isinstance(e, PermissionError) for e in chain):
        return False
    if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
        return True                         # ssh://: paramiko's connection errors are OSErrors
    return any(isinstance(e, (requests.ConnectionError, requests.Timeout)) for e in chain)


def engine_client(base_url: Optional[str] = None, timeout: float = 30.0, attempts: Optional[int] = None,
                  what: str = "the Docker Engine") -> docker.DockerClient:
    """A DockerClient for `base_url` (None: DOCKER_HOST or the local socket) once the engine
    answers; ValueError when waiting cannot help."""
    where = base_url or "DOCKER_HOST or the local socket"

    @backoff(max_wait=10.0, attempts=attempts, on=(EngineNotUp,), what=f"connecting to {what}")
    def connect() -> docker.DockerClient:
        try:
            if base_url:
                return docker.DockerClient(base_url=base_url, timeout=timeout)
            return docker.from_env(timeout=timeout)
        except Exception as exc:       # the SDK wraps most in DockerException; ssh:// raises paramiko's own
            if not_up(exc):
                raise EngineNotUp(f"no answer from {where}: {exc.__cause__ or exc}") from None
            if any(isinstance(e, PermissionError) for e in _chain(exc)):
                raise ValueError(f"{where}: permission denied; run as root or as a member of the docker "
                                 "group, or point DOCKER_HOST at an engine this user may use") from None
            if isinstance(exc, docker.errors.DockerException) or type(exc).__module__.startswith("paramiko"):
                raise ValueError(f"{base_url or 'DOCKER_HOST'}: not a Docker Engine address this client can "
                                 f"use: {exc}") from None
            raise
    return connect()
