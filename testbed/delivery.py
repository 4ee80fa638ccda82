"""The CD flow's real parts for tests: an image registry (Debian's docker-registry, with TLS when
it serves other hosts) and an sshd for docker's ssh:// transport. The engine reached over TLS
is a real one: dockerd --tlsverify on the cluster's host h2 (scripts/cluster.sh)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Optional

import requests

from testbed.processes import ROOT, Proc, find_binary, wait_until


class Registry:
    """Debian's docker-registry on host:port. On an address outside 127.0.0.0/8 an engine pulls
    only over TLS: `ca_dir` (a scripts/certs.sh CA) then signs the registry's certificate, and
    every engine on this machine trusts it through /etc/docker/certs.d/HOST:PORT/ca.crt (read at
    each pull and push, no engine restart); stop() removes that folder again."""

    def __init__(self, base: Path, port: int, host: str = "127.0.0.1", ca_dir: Optional[Path] = None):
        self.address = f"{host}:{port}"
        base.mkdir(parents=True, exist_ok=True)
        tls, self.trust_dir, self.verify = "", None, True
        if ca_dir is not None:
            certs("server", str(ca_dir), str(base / "tls"), f"IP:{host}")
            tls = f"  tls: {{certificate: {base / 'tls' / 'cert.pem'}, key: {base / 'tls' / 'key.pem'}}}\n"
            self.trust_dir = Path("/etc/docker/certs.d") / self.address
            self.trust_dir.mkdir(parents=True, exist_ok=True)
            (self.trust_dir / "ca.crt").write_text((ca_dir / "ca.pem").read_text())
            self.verify = str(ca_dir / "ca.pem")
        self.base_url = f"{'https' if tls else 'http'}://{self.address}"
        config = base / "registry.yml"
        config.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {base / 'data'}}}\n"
                          f"  delete: {{enabled: true}}\nhttp:\n  addr: {self.address}\n{tls}")
        self.proc = Proc("docker-registry", [find_binary("docker-registry"), "serve", str(config)], base)

    def start(self) -> "Registry":
        self.proc.start()
        wait_until(lambda: requests.get(f"{self.base_url}/v2/", timeout=2, verify=self.verify).ok, 20, "the registry")
        return self

    def remove_local_tags(self, client) -> None:
        """Untag this registry's images on the engine; other tags of the same image stay
        (the pushed test image is also demo-test:latest)."""
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(f"{self.address}/"):
                    client.images.remove(tag)

    def tags(self, repo: str) -> list:
        r = requests.get(f"{self.base_url}/v2/{repo}/tags/list", timeout=5, verify=self.verify)
        return (r.json().get("tags") or []) if r.ok else []

    def stop(self):
        self.proc.stop()
        if self.trust_dir is not None:
            shutil.rmtree(self.trust_dir, ignore_errors=True)


def wait_listening(port: int, what: str) -> None:
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 10, what)


def certs(*args: str) -> None:
    res = subprocess.run(["bash", str(ROOT / "scripts" / "certs.sh"), *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


class SshServer:
    """sshd on 127.0.0.1:PORT that lets in one generated key (as the user running the tests):
    docker's ssh:// transport runs `docker system dial-stdio` through it. `client_env(key)`
    gives a client that key and pins the server's host key."""

    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port
        for name in ("host", "client", "stranger"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True, timeout=30)
        (base / "authorized_keys").write_text((base / "client.pub").read_text())
        config = base / "sshd_config"
        config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host'}\nPidFile {base / 'sshd.pid'}\n"
                          f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
                          "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
                          "StrictModes no\nUsePAM no\n")
        self.proc = Proc("sshd", [find_binary("sshd"), "-D", "-e", "-f", str(config)], base)

    def client_env(self, key: str) -> dict:
        """Environment for a client that uses `key`: ssh reads ~/.ssh from the passwd entry, not
        $HOME, so an `ssh` first on PATH adds `-F` with this client's config (key, pinned host key)."""
        home = self.base / f"client-{key}"
        home.mkdir(exist_ok=True)
        host_key = " ".join((self.base / "host.pub").read_text().split()[:2])
        (home / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key}\n")
        (home / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {self.base / key}\n  IdentitiesOnly yes\n"
                                     f"  UserKnownHostsFile {home / 'known_hosts'}\n  StrictHostKeyChecking yes\n  BatchMode yes\n")
        (home / "config").chmod(0o600)
        wrapper = home / "ssh"
        wrapper.write_text(f"#!/bin/sh\nexec {find_binary('ssh')} -F {home / 'config'} \"$@\"\n")
        wrapper.chmod(0o755)
        return {"PATH": f"{home}:{os.environ['PATH']}"}

    def start(self) -> "SshServer":
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)       # sshd's privilege-separation folder
        self.proc.start()
        wait_listening(self.port, "sshd")
        return self

    def stop(self):
        self.proc.stop()
