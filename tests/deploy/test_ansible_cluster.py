"""ansible/cluster.yml applied to three machines, then used.

Each machine is a container standing in for a host: Debian 12 with systemd as its init (the roles
start and enable real systemd units), its own Docker Engine inside (registrator's and gatekeeper's
engine), on a network of their own that the test makes and removes (internal: nothing leaves
this machine). All three are Consul servers and Docker hosts, gatekeeper on two. The playbook runs
twice (the second run must change nothing); then a demo container started on one host is gated
by a gatekeeper and served through every host's proxy, and Consul holds up as promised: three
servers, gossip encrypted, HTTPS only, a token of its own for each agent.
"""
from __future__ import annotations

import json
import subprocess

import docker
import pytest

from tests.conftest import SESSION, TEST_LABEL
from tests.deploy.test_provisioning import TARGET_IMAGE, VENV_BIN, recap, run
from testbed.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

HOSTS = ("host-1", "host-2", "host-3")
GATEKEEPERS = ("host-1", "host-2")
IMAGES = ("demo:v1", "demo-test:latest")
# What systemd and a Docker Engine inside a container need (--privileged, minus the capability
# this machine's own container runtime withholds).
HOST_OPTIONS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--cgroupns", "private",
                "--security-opt", "apparmor=unconfined", "--security-opt", "seccomp=unconfined",
                "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
                "--tmpfs", "/run", "--tmpfs", "/run/lock"]
# Docker mounts a container's cgroups read-only; a real host's are writable, and the inner
# engine needs them so (it makes a cgroup per container).
WRITABLE_CGROUPS = ("for s in cpu cpuacct cpuset memory devices freezer blkio pids; do "
                    "if [ -d /sys/fs/cgroup/$s ] && [ ! -L /sys/fs/cgroup/$s ]; then "
                    "umount /sys/fs/cgroup/$s && mount -t cgroup -o $s cgroup /sys/fs/cgroup/$s; fi; done")


def sh(container, cmd: str, timeout: float = 120):
    res = container.exec_run(["timeout", str(int(timeout)), "sh", "-c", cmd])
    return res.exit_code, res.output.decode(errors="replace")


def wait_for(what: str, cond, timeout: float, every: float = 1.0, detail=lambda: ""):
    """testbed's wait_until, and on a time-out what `detail` says."""
    try:
        wait_until(cond, timeout, what, interval=every)
    except AssertionError as exc:
        pytest.fail(f"{exc}\n{detail()}")


@pytest.fixture
def machines(docker_client, demo_images):
    try:
        docker_client.images.get(TARGET_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{TARGET_IMAGE} is missing; `bash scripts/install.sh target-image` builds it")
    labels = {TEST_LABEL: SESSION}
    network = docker_client.networks.create(f"pst-{SESSION}-hosts", internal=True, labels=labels)
    made, volumes = {}, []
    try:
        for h in HOSTS:
            volume = docker_client.volumes.create(f"pst-{SESSION}-{h}-docker", labels=labels)
            volumes.append(volume)
            # the docker CLI: the SDK has no systempaths=unconfined (unmasked /proc, as --privileged)
            res = subprocess.run(["docker", "run", "-d", "--name", f"pst-{SESSION}-{h}", "--hostname", h,
                                  "--network", network.name, "--label", f"{TEST_LABEL}={SESSION}",
                                  "-v", f"{volume.name}:/var/lib/docker", *HOST_OPTIONS, TARGET_IMAGE, "/sbin/init"],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            made[h] = docker_client.containers.get(res.stdout.strip())
        for h, c in made.items():
            wait_for(f"{h}'s systemd up", lambda c=c: sh(c, "systemctl is-system-running")[1].strip()
                     in ("running", "degraded"), 60, detail=lambda c=c: sh(c, "systemctl --failed --no-pager")[1])
            code, out = sh(c, WRITABLE_CGROUPS)
            assert code == 0, out
            c.reload()
        yield {h: (c, c.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]) for h, c in made.items()}
    finally:
        for c in made.values():
            c.remove(force=True)
        for v in volumes:
            v.remove(force=True)
        network.remove()


def inventory(machines, pki) -> str:
    def line(h):
        c, ip = machines[h]
        return f"{h} ansible_host={c.name} cluster_address={ip}"
    return "\n".join([
        "[consul_servers]", *(line(h) for h in HOSTS),
        "[docker_hosts]", *HOSTS,
        "[gatekeepers]", *GATEKEEPERS,
        "[all:vars]",
        "ansible_connection=community.docker.docker", "ansible_become=false",
        "ansible_python_interpreter=/usr/bin/python3", "proxystack_apt_update=false",
        f"cluster_pki_dir={pki}", ""])


def consul_api(container, path: str, token: str = "", method: str = "GET", timeout: float = 10):
    header = f"-H 'X-Consul-Token: {token}' " if token else ""
    return sh(container, f"curl -sS --fail-with-body -X {method} --cacert /etc/proxystack/consul-ca.pem {header}"
                         f"https://127.0.0.1:8501{path}", timeout=timeout)


def test_cluster_playbook_makes_three_hosts_that_gate_and_serve_a_service_everywhere(machines, tmp_path):
    inv = tmp_path / "cluster.ini"
    inv.write_text(inventory(machines, tmp_path / "pki"))
    play = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), "ansible/cluster.yml"]
    first = run(play, home=tmp_path, timeout=900)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
    second = run(play, home=tmp_path, timeout=900)
    assert second.returncode == 0, second.stdout[-6000:]
    changed = [line for line in second.stdout.splitlines() if line.startswith("changed:")]
    assert all(recap_of(second.stdout, h)["changed"] == 0 for h in HOSTS), \
        f"the second run changed: {changed}\n{second.stdout[-3000:]}"

    # every host runs what its groups say, under systemd
    for h, (c, _) in machines.items():
        units = ["consul", "docker", "registrator", "proxy-reloader"] + (["gatekeeper"] if h in GATEKEEPERS else [])
        code, out = sh(c, "systemctl is-active " + " ".join(units))
        assert code == 0, f"{h}: {dict(zip(units, out.split()))}\n{sh(c, 'journalctl -n 60 --no-pager')[1]}"
        if h not in GATEKEEPERS:
            assert sh(c, "systemctl cat gatekeeper")[0] != 0, f"{h} is not a gatekeeper host but has its unit"

    # Consul as production runs it
    c1 = machines["host-1"][0]
    boot = sh(c1, "cat /etc/proxystack/cluster-tokens/bootstrap.token")[1].strip()
    assert sh(c1, "curl -s --max-time 3 http://127.0.0.1:8500/v1/status/leader")[0] != 0, "plain HTTP API is open"
    code, peers = consul_api(c1, "/v1/status/peers")
    assert code == 0 and len(json.loads(peers)) == 3, peers
    code, members = consul_api(c1, "/v1/agent/members", boot)
    assert code == 0 and sorted(m["Name"] for m in json.loads(members) if m["Status"] == 1) == list(HOSTS), members
    code, keyring = consul_api(c1, "/v1/operator/keyring", boot)
    assert code == 0 and json.loads(keyring)[0]["Keys"], f"gossip is not encrypted: {keyring}"
    for h, (c, _) in machines.items():
        # the agent holds its node identity (as Consul keeps it), which may write its own node only
        held = json.loads(sh(c, "cat /var/lib/consul/acl-tokens.json")[1])["agent"]
        assert held == sh(c1, f"cat /etc/proxystack/cluster-tokens/agent-{h}.token")[1].strip(), \
            f"{h}'s agent holds another token than its own node identity"
        code, out = consul_api(c, "/v1/acl/token/self", held)
        assert code == 0 and json.loads(out)["NodeIdentities"][0]["NodeName"] == h, out
        conf = sh(c, "stat -c %a /etc/consul.d/secrets.hcl /etc/consul.d/tls/key.pem")[1].split()
        assert conf == ["640", "640"], f"{h}: gossip key or TLS key readable by others: {conf}"

    # a service deployed on one host: gated, then served through every host's proxy
    archive = subprocess.run(["docker", "save", *IMAGES], capture_output=True, check=True).stdout
    for h, (c, _) in machines.items():
        load = subprocess.run(["docker", "exec", "-i", c.name, "docker", "load", "-q"], input=archive,
                              capture_output=True, timeout=300)
        assert load.returncode == 0, f"{h}: {load.stderr.decode()}"
    code, out = sh(c1, "docker run -d --name demo-1 -P -l SERVICE_NAME=demo "
                       "-l gatekeeper.tests=demo-test:latest demo:v1")
    assert code == 0, out

    def served_everywhere():      # every proxy answers with the demo's own JSON
        return all(json.loads(sh(c, "curl -s --max-time 3 http://127.0.0.1/demo/1")[1]).get("version")
                   for c, _ in machines.values())

    def story():
        return "\n".join(f"--- {h}\n" + sh(c, "journalctl -u gatekeeper -u registrator -u proxy-reloader -n 40 --no-pager")[1]
                         for h, (c, _) in machines.items())

    wait_for("demo served through all three proxies", served_everywhere, 240, every=2, detail=story)
    # served because its tests passed against that very instance: its gate is open, by a gatekeeper
    code, health = consul_api(c1, "/v1/health/service/demo", boot)
    checks = [ch for entry in json.loads(health) for ch in entry["Checks"] if ch["ServiceName"] == "demo"]
    assert checks and all(ch["Status"] == "passing" for ch in checks), checks
    assert any("pass" in ch["Output"].lower() for ch in checks), checks
    instance = json.loads(health)[0]["Service"]
    assert instance["Address"] == machines["host-1"][1], f"registered with an address other hosts cannot reach: {instance}"
    leaders = [h for h in GATEKEEPERS if "is now the leader" in sh(machines[h][0], "journalctl -u gatekeeper --no-pager")[1]]
    assert leaders, story()          # (a restart of the daemons during the playbook may have moved it)
    # three proxies on 0.0.0.0:80, each known by its own host (what `gatekeeper wait` counts)
    code, out = consul_api(c1, "/v1/health/service/proxy-reloader", boot)
    proxies = sorted((e["Node"]["Node"], e["Service"]["ID"]) for e in json.loads(out))
    assert proxies == [(h, f"proxy-reloader:{h}:0.0.0.0:80") for h in HOSTS], proxies


def recap_of(output: str, host: str) -> dict:
    for line in output.splitlines():
        if line.startswith(host + " "):
            return recap(line)
    pytest.fail(f"no PLAY RECAP line for {host}:\n{output[-3000:]}")
