"""Consul ACLs as the stack sets them up: default deny, one token per part, each able to do
its job and nothing else (real Consul, tokens made by catalog.acl_setup)."""
import json
import os
import stat
import subprocess

import pytest
import requests

from catalog.acl_setup import POLICIES
from catalog.kv_layout import VERDICTS
from testbed.processes import ROOT


def call(consul_server, method, path, part=None, body=None):
    headers = {}
    if part:
        headers["X-Consul-Token"] = open(consul_server.token_file(part)).read().strip()
    return requests.request(method, f"http://{consul_server.address}{path}", headers=headers, timeout=5,
                            data=json.dumps(body) if body is not None else None)


def service(name):
    return {"ID": f"{name}-1", "Name": name, "Address": "127.0.0.1", "Port": 1}


def test_anonymous_requests_are_refused(consul_server, stores, unique):
    stores.consul.kv_put(f"gatekeeper/policies/{unique}", json.dumps({"service": unique}))
    assert call(consul_server, "GET", f"/v1/kv/gatekeeper/policies/{unique}").status_code == 403
    assert call(consul_server, "PUT", "/v1/kv/gatekeeper/policies/x", body="x").status_code == 403
    assert call(consul_server, "PUT", "/v1/agent/service/register", body=service(unique)).status_code == 403
    r = call(consul_server, "GET", "/v1/catalog/services")
    assert r.status_code == 200 and unique not in r.json() and r.json().keys() <= {"consul"}


@pytest.mark.parametrize("part,allowed,refused", [
    ("registrator",
     [("PUT", "/v1/agent/service/register", service("lp-reg")), ("PUT", "/v1/kv/registrator/rejected/x", "r"),
      ("GET", "/v1/kv/gatekeeper/actions/lpnode/?recurse=true", None)],
     [("PUT", "/v1/kv/gatekeeper/verdicts/x", "forged"), ("PUT", "/v1/kv/gatekeeper/policies/x", "{}"),
      ("PUT", "/v1/kv/gatekeeper/actions/lpnode/x", "forged"), ("GET", "/v1/kv/gatekeeper/verdicts/?recurse=true", None)]),
    ("gatekeeper",
     [("PUT", "/v1/kv/gatekeeper/verdicts/x", "v"), ("PUT", "/v1/session/create", {"TTL": "10s"}),
      ("GET", "/v1/kv/certificates/chains/?recurse=true", None)],
     [("PUT", "/v1/kv/registrator/rejected/x", "r"), ("PUT", "/v1/kv/other/x", "o"),
      # a certificate's private key: proxy-reloader and the operator only
      ("GET", "/v1/kv/certificates/keys/lpseed", None), ("GET", "/v1/kv/certificates/keys/?recurse=true", None),
      ("PUT", "/v1/kv/certificates/chains/lp", "forged")]),
    ("proxy-reloader",
     [("GET", "/v1/kv/gatekeeper/policies/?recurse=true", None), ("GET", "/v1/health/state/any", None),
      ("PUT", "/v1/kv/proxy-reloader/served/p1/demo", "{}"), ("GET", "/v1/kv/certificates/?recurse=true", None),
      ("GET", "/v1/kv/certificates/keys/lpseed", None), ("PUT", "/v1/kv/certificates/keys/lp", "k"),
      ("PUT", "/v1/agent/service/register", {**service("proxystack-metrics"), "ID": "lp-px-metrics"})],
     [("PUT", "/v1/kv/gatekeeper/policies/x", "{}"), ("PUT", "/v1/kv/anything", "x"),
      ("PUT", "/v1/kv/proxy-reloader/other", "x"),
      ("GET", "/v1/kv/gatekeeper/verdicts/?recurse=true", None),
      ("PUT", "/v1/agent/service/register", service("lp-px"))]),
    ("prometheus",
     [("GET", "/v1/catalog/nodes", None)],
     [("GET", "/v1/kv/gatekeeper/policies/lpseed", None), ("GET", "/v1/kv/registrator/rejected/lpseed", None),
      ("GET", "/v1/kv/certificates/keys/lpseed", None),
      ("PUT", "/v1/agent/service/register", {**service("proxystack-metrics"), "ID": "lp-prom"}),
      ("PUT", "/v1/kv/anything", "x")]),
    ("operator",
     [("PUT", "/v1/kv/gatekeeper/policies/lp", "{}"), ("GET", "/v1/kv/registrator/?recurse=true", None),
      ("PUT", "/v1/kv/gatekeeper/history/lp/1", "{}"), ("PUT", "/v1/kv/gatekeeper/retest/lp", "1"),
      ("GET", "/v1/kv/gatekeeper/verdicts/?recurse=true", None),
      ("PUT", "/v1/kv/certificates/keys/lp", "k"), ("GET", "/v1/kv/certificates/keys/lpseed", None)],
     [("PUT", "/v1/agent/service/register", service("lp-op")), ("PUT", "/v1/kv/registrator/rejected/x", "r"),
      ("PUT", "/v1/kv/proxy-reloader/served/p1/demo", "{}"),
      # gatekeeper's own decisions: the operator cannot admit what its tests did not pass
      ("PUT", "/v1/kv/gatekeeper/verdicts/x", "forged"), ("PUT", "/v1/kv/gatekeeper/gates/lpnode/x", "forged"),
      ("PUT", "/v1/kv/gatekeeper/actions/lpnode/x", "forged"), ("PUT", "/v1/kv/gatekeeper/healing/x", "{}"),
      ("DELETE", "/v1/kv/gatekeeper/verdicts/lpseed", None), ("PUT", "/v1/kv/gatekeeper/leader", "me")]),
    ("viewer",     # the dashboard's read-only logins: what the operator reads, nothing written
     [("GET", "/v1/kv/gatekeeper/policies/?recurse=true", None), ("GET", "/v1/kv/registrator/?recurse=true", None),
      ("GET", "/v1/kv/gatekeeper/verdicts/?recurse=true", None), ("GET", "/v1/kv/certificates/chains/?recurse=true", None),
      ("GET", "/v1/health/state/any", None)],
     [("PUT", "/v1/kv/gatekeeper/policies/x", "{}"), ("PUT", "/v1/kv/gatekeeper/history/lp/3", "{}"),
      ("PUT", "/v1/kv/gatekeeper/verdicts/x", "forged"), ("PUT", "/v1/kv/proxy-reloader/served/p1/demo", "{}"),
      ("GET", "/v1/kv/certificates/keys/lpseed", None), ("PUT", "/v1/agent/service/register", service("lp-view"))]),
    ("breakglass",
     [("PUT", "/v1/kv/gatekeeper/verdicts/lpforced", "{}"), ("PUT", "/v1/kv/gatekeeper/history/lp/2", "{}"),
      ("GET", "/v1/kv/gatekeeper/policies/?recurse=true", None), ("GET", "/v1/health/state/any", None)],
     [("PUT", "/v1/kv/gatekeeper/policies/x", "{}"), ("PUT", "/v1/kv/gatekeeper/gates/lpnode/x", "forged"),
      ("PUT", "/v1/kv/gatekeeper/actions/lpnode/x", "forged"), ("PUT", "/v1/kv/registrator/rejected/x", "r"),
      ("PUT", "/v1/agent/service/register", service("lp-bg")),
      ("GET", "/v1/kv/certificates/keys/lpseed", None)]),
])
def test_each_token_can_do_its_job_and_nothing_else(consul_server, part, allowed, refused):
    # Every key an allowed read asks for exists, so an allowed read answers 200 with the key:
    # a 404 (what Consul answers for a recursive read the token may not see) cannot pass for it.
    seeds = ["gatekeeper/policies/lpseed", "registrator/rejected/lpseed", "gatekeeper/verdicts/lpseed",
             "gatekeeper/actions/lpnode/lpseed", "certificates/chains/lpseed", "certificates/keys/lpseed"]
    for key in seeds:
        call(consul_server, "PUT", f"/v1/kv/{key}", "bootstrap", {"service": "lpseed"})
    for method, path, body in allowed:
        r = call(consul_server, method, path, part, body)
        assert r.status_code == 200, f"{part} should be allowed {method} {path}: {r.status_code} {r.text}"
        if method == "GET" and "/v1/kv/" in path:
            prefix = path.split("/v1/kv/", 1)[1].split("?")[0]
            assert any(e["Key"].startswith(prefix) for e in r.json()), f"{part} reads nothing under {prefix}"
    for method, path, body in refused:
        r = call(consul_server, method, path, part, body)
        assert r.status_code == 403 or (method == "GET" and r.status_code == 404 and not r.text.strip()), \
            f"{part} must not {method} {path}: {r.status_code} {r.text}"
    call(consul_server, "PUT", "/v1/agent/service/deregister/lp-reg-1", "registrator")
    call(consul_server, "PUT", "/v1/agent/service/deregister/lp-px-metrics", "bootstrap")   # Prometheus would list it
    call(consul_server, "DELETE", "/v1/kv/gatekeeper/policies/lp", "bootstrap")    # '{}' is no valid policy
    for key in ("gatekeeper/history/lp?recurse=true", "gatekeeper/retest/lp", "gatekeeper/verdicts/lpforced",
                "certificates/keys/lp"):
        call(consul_server, "DELETE", f"/v1/kv/{key}", "bootstrap")
    for key in seeds:
        call(consul_server, "DELETE", f"/v1/kv/{key}", "bootstrap")


def test_prometheus_sees_the_metrics_endpoints_and_no_other_service(consul_server, unique):
    metrics = {**service("proxystack-metrics"), "ID": f"proxystack-metrics:{unique}", "Meta": {"component": "x"}}
    other = service(f"lp-{unique}")
    for body in (metrics, other):
        assert call(consul_server, "PUT", "/v1/agent/service/register", "bootstrap", body).status_code == 200
    try:
        seen = call(consul_server, "GET", "/v1/catalog/services", "prometheus").json()
        assert "proxystack-metrics" in seen and other["Name"] not in seen
        found = call(consul_server, "GET", "/v1/catalog/service/proxystack-metrics", "prometheus").json()
        assert metrics["ID"] in [e["ServiceID"] for e in found]
        assert call(consul_server, "GET", f"/v1/catalog/service/{other['Name']}", "prometheus").json() == []
    finally:
        for body in (metrics, other):
            call(consul_server, "PUT", f"/v1/agent/service/deregister/{body['ID']}", "bootstrap")


def test_script_checks_cannot_be_registered_through_the_api(consul_server):
    r = call(consul_server, "PUT", "/v1/agent/check/register", "bootstrap",
             {"Name": "evil", "Args": ["/bin/sh", "-c", "id"], "Interval": "10s"})
    assert r.status_code != 200 and "script" in r.text.lower()


def test_token_files_are_private(consul_server):
    for part in ("bootstrap", "registrator", "gatekeeper", "proxy-reloader", "operator", "viewer", "breakglass"):
        mode = stat.S_IMODE(os.stat(consul_server.token_file(part)).st_mode)
        assert mode == 0o600, f"{part}.token has mode {oct(mode)}"


def test_acl_setup_is_idempotent_and_an_upgrade_gets_the_new_rules_by_running_it_again(consul_server):
    def acl_setup():
        res = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "catalog.acl_setup", "--consul",
                              consul_server.address, "--tokens", str(consul_server.tokens)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip().splitlines()[-1]

    before = {p: open(consul_server.token_file(p)).read() for p in ("registrator", "operator")}
    os.chmod(consul_server.token_file("operator"), 0o640)      # as an installer lets a service's user read it
    assert acl_setup() == "ACLs up to date"
    assert before == {p: open(consul_server.token_file(p)).read() for p in ("registrator", "operator")}
    assert stat.S_IMODE(os.stat(consul_server.token_file("operator")).st_mode) == 0o640, "a file left alone"
    os.chmod(consul_server.token_file("operator"), 0o600)
    # an older release's rules for the operator (it could write verdicts), as before an upgrade
    mgmt = {"X-Consul-Token": open(consul_server.token_file("bootstrap")).read().strip()}
    api = f"http://{consul_server.address}/v1/acl"
    [policy] = [p for p in requests.get(f"{api}/policies", headers=mgmt, timeout=5).json()
                if p["Name"] == "proxystack-operator"]
    old_rules = POLICIES["operator"].replace(f'key_prefix "{VERDICTS}" {{ policy = "read" }}\n', "")
    r = requests.put(f"{api}/policy/{policy['ID']}", headers=mgmt, timeout=5, json={
        "Name": "proxystack-operator", "Rules": old_rules,
        "Description": "proxystack operator: least privilege for its job"})
    assert r.status_code == 200, r.text
    assert acl_setup() == "ACLs changed: policy operator updated"
    rules = requests.get(f"{api}/policy/{policy['ID']}", headers=mgmt, timeout=5).json()["Rules"]
    assert rules == POLICIES["operator"]
    assert acl_setup() == "ACLs up to date"


def acl_setup_nodes(consul_server, *nodes):
    return subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "catalog.acl_setup", "--consul",
                           consul_server.address, "--tokens", str(consul_server.tokens),
                           *[a for n in nodes for a in ("--node", n)]],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_each_hosts_agent_token_writes_its_own_node_only_and_is_made_once(consul_server):
    res = acl_setup_nodes(consul_server, "lp-host-a", "lp-host-b")
    assert res.returncode == 0, res.stderr
    assert "token agent-lp-host-a created" in res.stdout and "token agent-lp-host-b created" in res.stdout
    secret_a = open(consul_server.token_file("agent-lp-host-a")).read()
    assert stat.S_IMODE(os.stat(consul_server.token_file("agent-lp-host-a")).st_mode) == 0o600

    def register(node, part):
        return call(consul_server, "PUT", "/v1/catalog/register", part,
                    {"Node": node, "Address": "192.0.2.7", "SkipNodeUpdate": False})
    assert register("lp-host-a", "agent-lp-host-a").status_code == 200
    assert register("lp-host-b", "agent-lp-host-a").status_code == 403, "another host's node"
    assert register("lp-host-b", "agent-lp-host-b").status_code == 200
    assert call(consul_server, "GET", "/v1/catalog/services", "agent-lp-host-a").status_code == 200
    assert call(consul_server, "GET", "/v1/kv/gatekeeper/?recurse", "agent-lp-host-a").status_code in (403, 404)

    again = acl_setup_nodes(consul_server, "lp-host-a", "lp-host-b")
    assert again.stdout.strip().splitlines()[-1] == "ACLs up to date"
    assert open(consul_server.token_file("agent-lp-host-a")).read() == secret_a
    for node in ("lp-host-a", "lp-host-b"):
        call(consul_server, "PUT", "/v1/catalog/deregister", "bootstrap", {"Node": node})


def test_a_node_name_consul_would_not_take_is_refused_before_anything_is_made(consul_server):
    res = acl_setup_nodes(consul_server, "h1", "bad name")
    assert res.returncode == 2
    assert "--node 'bad name'" in res.stderr and "letters, digits and '-'" in res.stderr
    assert not os.path.exists(consul_server.token_file("agent-h1"))


def test_the_docker_engine_listens_on_loopback_only():
    """No TCP port at all without swarm mode; with it (scripts/stack.sh swarm), Swarm's
    management and gossip ports on 127.0.0.1 only and no VXLAN port (tests/e2e/test_swarm.py
    checks that case while swarm mode is on)."""
    from testbed.swarm import docker, exposed_listeners
    assert exposed_listeners() == []
    if docker("info", "--format", "{{.Swarm.LocalNodeState}}") != "active":
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
        assert "dockerd" not in out, f"dockerd listens on TCP:\n{out}"
