"""The CD flow's real parts for tests: an image registry (Debian's docker-registry) and a TLS
listener on 127.0.0.1 in front of the local engine that demands a client certificate, with
certificates made by scripts/certs.sh."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import requests

from tests.support.processes import ROOT, Proc, find_binary, wait_until


class Registry:
    def __init__(self, base: Path, port: int):
        self.address = f"127.0.0.1:{port}"
        base.mkdir(parents=True, exist_ok=True)
        config = base / "registry.yml"
        config.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {base / 'data'}}}\n"
                          f"  delete: {{enabled: true}}\nhttp:\n  addr: {self.address}\n")
        self.proc = Proc("docker-registry", [find_binary("docker-registry"), "serve", str(config)], base)

    def start(self) -> "Registry":
        self.proc.start()
        wait_until(lambda: requests.get(f"http://{self.address}/v2/", timeout=2).ok, 20, "the registry")
        return self

    def remove_local_tags(self, client) -> None:
        """Untag this registry's images on the engine; other tags of the same image stay
        (the pushed test image is also demo-test:latest)."""
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(f"{self.address}/"):
                    client.images.remove(tag)

    def tags(self, repo: str) -> list:
        r = requests.get(f"http://{self.address}/v2/{repo}/tags/list", timeout=5)
        return (r.json().get("tags") or []) if r.ok else []

    def stop(self):
        self.proc.stop()


def wait_listening(port: int, what: str) -> None:
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 10, what)


def certs(*args: str) -> None:
    res = subprocess.run(["bash", str(ROOT / "scripts" / "certs.sh"), *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


class TlsEngineFront:
    """tcp://127.0.0.1:PORT with TLS and a required client certificate, forwarding to the local
    engine's socket: what `dockerd --tlsverify -H tcp://...:2376` offers, for the engine the
    tests already run. `client_dir` holds a valid client's ca.pem, cert.pem, key.pem."""

    def __init__(self, base: Path, port: int, socket: str = "/var/run/docker.sock"):
        self.port, self.url = port, f"tcp://127.0.0.1:{port}"
        self.ca, self.server_dir, self.client_dir = base / "ca", base / "server", base / "client"
        certs("ca", str(self.ca))
        certs("server", str(self.ca), str(self.server_dir), "IP:127.0.0.1,DNS:localhost")
        certs("client", str(self.ca), str(self.client_dir), "deployer")
        s = self.server_dir
        self.proc = Proc("engine-tls", [find_binary("socat"),
                                        f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={s / 'cert.pem'},"
                                        f"key={s / 'key.pem'},cafile={s / 'ca.pem'},verify=1",
                                        f"UNIX-CONNECT:{socket}"], base)

    def start(self) -> "TlsEngineFront":
        self.proc.start()
        wait_listening(self.port, "the TLS front")
        return self

    def stop(self):
        self.proc.stop()


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
