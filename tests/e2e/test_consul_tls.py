"""Consul as production runs it: gossip encrypted, TLS on RPC (verify_incoming_rpc,
verify_outgoing, the server's host name checked) and the API on HTTPS only, with a CA of the
stack's own (scripts/certs.sh). Every part of the stack reaches it over HTTPS, trusting that CA
through Consul's own CONSUL_CACERT; a client that does not trust it is refused, saying what to
set."""
from __future__ import annotations

import subprocess

import pytest
import requests

from catalog.stores import Stores
from tests.conftest import SESSION
from testbed.processes import ConsulServer, python_module
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

HTTPS, SERVER_PORTS, PORT = 18520, 18320, 18029      # Consul's API; its RPC and gossip ports; the proxy


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    consul = ConsulServer(tmp_path_factory.mktemp("consul-tls"), http_port=HTTPS, port_base=SERVER_PORTS, tls=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONSUL_CACERT", consul.ca_file)       # this process and the daemons it starts
        consul.start()
        yield consul
        consul.stop()


@pytest.fixture(scope="module")
def stack(hardened, docker_client, demo_images, tmp_path_factory):
    s = Stack(hardened, tmp_path_factory.mktemp("tls-stack"), docker_client, f"{SESSION}tl", PORT,
              drain_seconds=1, service="tlsdemo").start()
    yield s
    s.stop()


def test_consul_serves_https_only_and_encrypts_its_gossip(hardened):
    agent = requests.get(f"https://127.0.0.1:{HTTPS}/v1/agent/self", verify=hardened.ca_file, timeout=5,
                         headers=hardened.headers).json()
    assert agent["Stats"]["serf_lan"]["encrypted"] == "true"
    assert agent["DebugConfig"]["VerifyIncomingRPC"] and agent["DebugConfig"]["VerifyOutgoing"]
    assert agent["DebugConfig"]["VerifyServerHostname"]
    plain = requests.get(f"http://127.0.0.1:{HTTPS}/v1/status/leader", timeout=5)
    assert plain.status_code == 400 and "HTTPS server" in plain.text                 # no plain HTTP here ...
    assert agent["DebugConfig"]["HTTPPort"] == -1                                      # ... nor anywhere
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{HTTPS}/v1/status/leader", timeout=5)     # the system's CAs: not trusted


def test_a_container_is_registered_tested_admitted_and_served_through_a_consul_on_https(stack):
    c = stack.deploy("v1", "demo:v1")
    stack.wait(lambda: stack.instance(c) is not None and stack.instance(c).admitted, 120,
               "registered, tested and admitted, every part speaking HTTPS to Consul")
    stack.wait(lambda: stack.served_version() == "v1", 30, "served by the proxy")
    code, out, err = stack.gatekeeper_cli("status", "tlsdemo", "--json")
    assert code == 0 and '"version": "v1"' in out, out + err


def test_a_client_without_the_ca_is_refused_saying_what_to_set(hardened, monkeypatch):
    monkeypatch.delenv("CONSUL_CACERT")
    res = subprocess.run(python_module("gatekeeper", "--consul", hardened.address, "--consul-token-file",
                                       hardened.token_file("operator"), "status"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "CONSUL_CACERT" in res.stderr and "certificate" in res.stderr, res.stderr
    with pytest.raises(requests.exceptions.SSLError):
        Stores.connect(hardened.address, token=hardened.management_token, timeout=5).instances.all()
