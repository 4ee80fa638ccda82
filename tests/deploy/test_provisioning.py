"""ansible/ and the Vagrantfile: syntax, lint, and a real apply to a throwaway target.

The target is a container from the local Debian 12 image built for it (the packages the roles
install are already present: a container cannot reach the package mirror), reached through the
community.docker connection. The playbook is applied twice; the second run must change nothing.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import SESSION, TEST_LABEL
from testbed.delivery import certs
from testbed.processes import ROOT

pytestmark = pytest.mark.e2e

VENV_BIN = ROOT / ".venv" / "bin"
TARGET_IMAGE = "proxystack-target:bookworm-4"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run(args, timeout=600, **kw):
    home = kw.pop("home", ROOT)
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home),
           "VAGRANT_DOTFILE_PATH": str(home / ".vagrant"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "LANG": "C.UTF-8",
           "ANSIBLE_PIPELINING": "1"}       # one `docker exec` per module, not three
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=kw.pop("cwd", ROOT), env=env, **kw)


def recap(output: str) -> dict:
    found = RECAP.findall(output)
    assert found, f"no PLAY RECAP in:\n{output[-3000:]}"
    host, ok, changed, unreachable, failed = found[-1]
    return {"ok": int(ok), "changed": int(changed), "unreachable": int(unreachable), "failed": int(failed)}


def test_the_playbook_passes_its_syntax_check():
    res = run([str(VENV_BIN / "ansible-playbook"), "-i", "ansible/inventory.ini", "ansible/site.yml", "--syntax-check"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_ansible_lint_finds_nothing(tmp_path):
    res = run([str(VENV_BIN / "ansible-lint"), "--offline", "--nocolor", "ansible/"], home=tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "0 failure(s), 0 warning(s)" in res.stderr + res.stdout


def test_vagrant_validate_accepts_the_vagrantfile_and_catches_a_broken_one(tmp_path):
    res = run(["vagrant", "validate", "--ignore-provider"], home=tmp_path)
    assert res.returncode == 0 and "validated successfully" in res.stdout, res.stdout + res.stderr
    broken = tmp_path / "broken"
    shutil.copytree(ROOT / "ansible", broken / "ansible")
    text = (ROOT / "Vagrantfile").read_text()
    assert "machine.vm.hostname = name" in text
    (broken / "Vagrantfile").write_text(text.replace("machine.vm.hostname = name", "machine.vm.hostnme = name"))
    res = run(["vagrant", "validate", "--ignore-provider"], home=tmp_path, cwd=broken)
    assert res.returncode != 0 and "hostnme" in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.fixture
def target(docker_client, tmp_path):
    try:
        docker_client.images.get(TARGET_IMAGE)
    except Exception:
        pytest.fail(f"{TARGET_IMAGE} is missing; `bash scripts/install.sh target-image` builds it")
    c = docker_client.containers.run(TARGET_IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
                                     name=f"pst-{SESSION}-ansible-target", labels={TEST_LABEL: SESSION})
    # A target whose package lists were last refreshed long ago, as on a machine (or an image)
    # that has been around for a while: the roles must not try to refresh them when told not to.
    res = c.exec_run(["touch", "-d", "2 days ago", "/var/lib/apt/lists"])
    assert res.exit_code == 0, res.output
    yield c
    c.remove(force=True)


@pytest.mark.timeout(600)     # two runs of the whole playbook: about 80 s here
def test_the_playbook_applies_to_a_fresh_machine_and_a_second_run_changes_nothing(target, tmp_path):
    certs("ca", str(tmp_path / "ca"))
    certs("server", str(tmp_path / "ca"), str(tmp_path / "engine"), "IP:127.0.0.1,DNS:prod")
    inventory = tmp_path / "inventory.ini"
    # one machine in every group: every role, and the stack role both with and without services
    inventory.write_text(
        "[dev]\ntarget\n[cd]\ntarget\n[prod]\ntarget\n[all:vars]\n"
        f"ansible_connection=community.docker.docker\nansible_host={target.name}\n"
        "ansible_become=false\nansible_python_interpreter=/usr/bin/python3\nproxystack_apt_update=false\n"
        f"docker_engine_tls_src={tmp_path / 'engine'}\n")
    play = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "ansible/site.yml"]
    first = run(play, home=tmp_path)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    assert recap(first.stdout)["changed"] > 10 and recap(first.stdout)["failed"] == 0
    second = run(play, home=tmp_path)
    assert second.returncode == 0, second.stdout[-5000:]
    changed = [line for line in second.stdout.splitlines() if line.startswith("changed:")]
    assert recap(second.stdout)["changed"] == 0, f"the second run changed: {changed}\n{second.stdout[-3000:]}"

    def sh(cmd):
        code, out = target.exec_run(["sh", "-c", cmd])
        return code, out.decode()

    for tool in ("gatekeeper", "delivery", "registrator", "proxy-reloader", "dashboard"):
        assert sh(f"{tool} --help")[0] == 0, f"{tool} is not installed on the target"
    assert sh("consul validate /etc/consul.d")[0] == 0
    daemon = json.loads(sh("cat /etc/docker/daemon.json")[1])
    assert daemon["tlsverify"] is True and "tcp://0.0.0.0:2376" in daemon["hosts"] and daemon["ip"] == "127.0.0.1"
    assert sh("stat -c %a /etc/docker/tls/key.pem")[1].strip() == "600"
    assert sh("cat /etc/docker/tls/cert.pem")[1] == (tmp_path / "engine" / "cert.pem").read_text()
    for unit in ("consul", "registrator", "gatekeeper", "proxy-reloader"):
        code, text = sh(f"cat /etc/systemd/system/{unit}.service")
        assert code == 0 and "ExecStart=" in text, unit
    gatekeeper_unit = sh("cat /etc/systemd/system/gatekeeper.service")[1]
    assert "--consul-token-file /etc/proxystack/tokens/gatekeeper.token" in gatekeeper_unit
    assert "--metrics 127.0.0.1:8003 --prometheus http://127.0.0.1:9090" in gatekeeper_unit
    assert "--metrics 127.0.0.1:8002" in sh("cat /etc/systemd/system/registrator.service")[1]
    dashboard_unit = sh("cat /etc/systemd/system/dashboard.service")[1]
    assert "--listen 127.0.0.1:8005 --prometheus http://127.0.0.1:9090\n" in dashboard_unit
    assert "token" not in dashboard_unit.split("ExecStart=")[1].split("\n")[0]
    for unit in ("prometheus", "prometheus-targets"):
        code, text = sh(f"cat /etc/systemd/system/{unit}.service")
        assert code == 0 and "ExecStart=" in text, unit
    assert sh("/usr/local/bin/prometheus --version")[0] == 0
    assert sh("test -f /usr/share/prometheus/web/static/css/graph.css")[0] == 0
    config = json.loads(sh("cat /etc/proxystack/prometheus/prometheus.yml")[1])
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == [
        "/var/lib/proxystack-prometheus/targets/targets.json"]
    assert config["rule_files"] == ["/etc/proxystack/prometheus/rules.yml"]
    assert "addr: 127.0.0.1:5000" in sh("cat /etc/docker/registry/config.yml")[1]
    assert "docker" in sh("id -nG proxystack")[1].split()
