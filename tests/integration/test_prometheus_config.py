"""The configuration and rules the stack gives Prometheus pass Prometheus's own checker
(Debian's promtool, the same release as the server the stack runs), and the targets watcher
follows the metrics endpoints announced in real Consul with Prometheus's own token."""
import contextlib
import json
import subprocess

from catalog.stores import Stores
from monitoring.config import RULES, render
from testbed.processes import Proc, find_binary, python_module, wait_until


def promtool(*args):
    return subprocess.run([find_binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_the_rendered_configuration_is_valid(tmp_path):
    targets = tmp_path / "targets.json"
    targets.write_text("[]\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(render(str(targets), listen="127.0.0.1:9090"))
    res = promtool("check", "config", str(config))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_the_recording_and_alerting_rules_are_valid():
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 8 rules found" in res.stdout + res.stderr


def test_a_registrator_whose_token_is_refused_pages_after_a_minute_and_not_before(tmp_path):
    (tmp_path / "t.yml").write_text(f"""rule_files: ["{RULES}"]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'registrator_consul_token_refused{{instance="127.0.0.3:9102"}}'
        values: '0 0 1 1 1 1 1 1 1'
      - series: 'registrator_consul_token_refused{{instance="127.0.0.2:9102"}}'
        values: '0 0 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 45s
        alertname: ProxystackRegistratorTokenRefused
        exp_alerts: []
      - eval_time: 2m
        alertname: ProxystackRegistratorTokenRefused
        exp_alerts:
          - exp_labels: {{severity: page, instance: "127.0.0.3:9102"}}
            exp_annotations:
              summary: "registrator at 127.0.0.3:9102: Consul refuses its token, so its host's containers are neither registered nor removed; write a valid token to its --consul-token-file"
""")
    res = promtool("test", "rules", str(tmp_path / "t.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_watcher_follows_announcements_in_consul(consul_server, tmp_path, unique):
    out = tmp_path / "targets.json"
    watcher = Proc("targets", python_module("monitoring.targets", "--consul", consul_server.address,
                                            "--consul-token-file", consul_server.token_file("prometheus"),
                                            "--out", str(out)), tmp_path).start()
    gatekeeper = Stores.connect(consul_server.address, token=open(consul_server.token_file("gatekeeper")).read().strip())
    sid = f"proxystack-metrics:gatekeeper:{unique}"

    def mine():
        return [g for g in json.loads(out.read_text()) if g["labels"]["consul_service_id"] == sid]
    try:
        wait_until(lambda: out.exists(), 30, "the targets file")
        gatekeeper.proxies.announce_metrics(sid, "gatekeeper", "127.0.0.1:18999")
        found = wait_until(mine, 20, "the announced endpoint in the file")
        assert found == [{"targets": ["127.0.0.1:18999"],
                          "labels": {"job": "gatekeeper", "node": "proxystack-test", "consul_service_id": sid}}]
        gatekeeper.proxies.withdraw(sid)
        wait_until(lambda: not mine(), 20, "the withdrawn endpoint gone from the file")
    finally:
        with contextlib.suppress(Exception):       # already withdrawn when the test got that far
            gatekeeper.proxies.withdraw(sid)
        watcher.stop()


def test_a_targets_file_that_cannot_be_written_for_a_while_is_written_once_it_can(consul_server, tmp_path, unique):
    """A full disk or a volume away for a moment must not leave Prometheus's targets frozen."""
    folder = tmp_path / "sd"
    folder.mkdir()
    out = folder / "targets.json"
    watcher = Proc("targets-away", python_module("monitoring.targets", "--consul", consul_server.address,
                                                 "--consul-token-file", consul_server.token_file("prometheus"),
                                                 "--out", str(out)), tmp_path).start()
    gatekeeper = Stores.connect(consul_server.address, token=open(consul_server.token_file("gatekeeper")).read().strip())
    first, sid = f"proxystack-metrics:gatekeeper:{unique}-first", f"proxystack-metrics:gatekeeper:{unique}"
    try:
        gatekeeper.proxies.announce_metrics(first, "gatekeeper", "127.0.0.1:18997")
        # once the file names it, the watch is waiting in a blocking query: nothing writes meanwhile
        wait_until(lambda: out.exists() and first in out.read_text(), 30, "the targets file naming a first endpoint")
        out.unlink()
        folder.rmdir()                                   # the folder away: the next write fails
        gatekeeper.proxies.announce_metrics(sid, "gatekeeper", "127.0.0.1:18998")
        wait_until(lambda: "acting on the change failed" in watcher.log(), 30, "the failed write, said")
        folder.mkdir()
        wait_until(lambda: out.exists() and sid in out.read_text(), 30, "the file written once the folder is back")
        assert watcher.alive()
    finally:
        for announced in (first, sid):
            with contextlib.suppress(Exception):
                gatekeeper.proxies.withdraw(announced)
        watcher.stop()
