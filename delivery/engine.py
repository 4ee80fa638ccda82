"""Reaching a Docker Engine: the local socket, ssh://, or TCP with TLS client certificates.

An engine on plain tcp:// (port 2375) answers anyone who can reach the port with root on that
host, so a TCP address is accepted only together with a certificate folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import docker
import requests

from catalog.errors import BadInput, Unreachable

TLS_FILES = ("ca.pem", "cert.pem", "key.pem")     # the layout docker's DOCKER_CERT_PATH uses


class EngineError(Unreachable):
    """The engine cannot be used; str() says which engine, what went wrong and what to do."""


class BadEngineSettings(EngineError, BadInput):
    """Refused before connecting: an engine on TCP without TLS, missing certificate files, or an
    address scheme that is not unix://, ssh:// or tcp://."""
    exit_code = BadInput.exit_code


class _EngineAPI(docker.APIClient):
    """An API client that ignores the environment: requests lets REQUESTS_CA_BUNDLE replace the
    engine's CA given in TLSConfig, and engine traffic must not go through an HTTP(S)_PROXY."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        self.trust_env = False
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


class _TlsClient(docker.DockerClient):
    def __init__(self, **kwargs):          # not super().__init__: that would build a plain APIClient
        self.api = _EngineAPI(**kwargs)


def connect(url: Optional[str] = None, tls_dir: Optional[str] = None, timeout: float = 120.0) -> docker.DockerClient:
    """A client for the engine at `url` (default DOCKER_HOST, else the local socket), checked
    with a ping. `tls_dir` (default DOCKER_CERT_PATH) holds ca.pem, cert.pem and key.pem."""
    url = url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    tls_dir = tls_dir or os.environ.get("DOCKER_CERT_PATH")
    try:
        client = _client(url, tls_dir, timeout)     # asks the engine for its API version already
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(f"cannot reach the Docker Engine at {url}: {exc}") from None
    return client


def _client(url: str, tls_dir: Optional[str], timeout: float) -> docker.DockerClient:
    scheme = urlparse(url).scheme
    if scheme == "unix":
        client = docker.DockerClient(base_url=url, timeout=timeout)
    elif scheme == "ssh":
        # The ssh binary does the work: keys, known_hosts and ~/.ssh/config apply as for `ssh`.
        client = docker.DockerClient(base_url=url, use_ssh_client=True, timeout=timeout)
    elif scheme in ("tcp", "https"):
        if not tls_dir:
            raise BadEngineSettings(f"{url}: refusing an engine on TCP without TLS; give --tls-dir DIR "
                                    f"(holding {', '.join(TLS_FILES)}) or DOCKER_CERT_PATH, or use ssh://USER@HOST")
        ca, cert, key = (Path(tls_dir) / f for f in TLS_FILES)
        missing = [str(p) for p in (ca, cert, key) if not p.is_file()]
        if missing:
            raise BadEngineSettings(f"{url}: TLS files missing: {', '.join(missing)} (scripts/certs.sh makes them)")
        tls = docker.tls.TLSConfig(client_cert=(str(cert), str(key)), ca_cert=str(ca), verify=True)
        client = _TlsClient(base_url="https://" + url.split("://", 1)[1], tls=tls, timeout=timeout)
    else:
        raise BadEngineSettings(f"{url}: unsupported engine address; use unix:///PATH, ssh://USER@HOST or tcp://HOST:2376 with TLS")
    return client
