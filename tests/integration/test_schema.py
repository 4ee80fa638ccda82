"""The KV layout's schema version (catalog/schema.py) on a real Consul with ACLs on: gatekeeper
writes it on a new stack; registrator, proxy-reloader and gatekeeper each refuse to act on data
laid out by a newer proxystack, exit 1 and say what to do; every part's token may read the key,
and only gatekeeper's may write it."""
from __future__ import annotations

import subprocess

import pytest
from consul.base import ACLPermissionDenied

from catalog.consul_client import ConsulClient
from catalog.kv_layout import SCHEMA
from catalog.schema import SCHEMA_VERSION
from testbed.processes import ROOT, ConsulServer, Proc, python_module, wait_until

CONSUL_HTTP, CONSUL_PORTS, LISTEN = 18541, 18343, "127.0.0.1:18031"


@pytest.fixture(scope="module")
def consul(tmp_path_factory):
    server = ConsulServer(tmp_path_factory.mktemp("schema"), CONSUL_HTTP, CONSUL_PORTS).start()
    yield server
    server.stop()


def commands(consul, tmp_path):
    def part(module, name, *args):
        return python_module(module, "--consul", consul.address, "--consul-token-file", consul.token_file(name), *args)
    return {
        "gatekeeper": part("gatekeeper", "gatekeeper", "run", "--id", "schema-test", "--wait", "1"),
        "registrator": part("registrator", "registrator", "--hostname", "schema-test", "--explicit"),
        "proxy-reloader": part("proxy_reloader", "proxy-reloader", "--nginx-prefix", str(tmp_path / "nginx"),
                               "--listen", LISTEN, "--mode", "reload"),
    }


def test_gatekeeper_writes_the_version_on_a_new_stack_and_each_part_refuses_a_newer_one(consul, tmp_path):
    admin = ConsulClient(consul.address, token=consul.management_token)
    admin.kv_delete(SCHEMA)                               # a new stack
    gatekeeper = Proc("gatekeeper", commands(consul, tmp_path)["gatekeeper"], tmp_path).start()
    try:
        wait_until(lambda: admin.kv_get(SCHEMA)[1] == str(SCHEMA_VERSION), 30, "gatekeeper to write the version")
    finally:
        gatekeeper.stop()
    admin.kv_put(SCHEMA, str(SCHEMA_VERSION + 1))
    try:
        for part, argv in commands(consul, tmp_path).items():
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert res.returncode == 1, (part, res.returncode, res.stderr[-2000:])
            assert (f"{part} refuses to act: the data in Consul has schema version {SCHEMA_VERSION + 1}" in res.stderr
                    and f"knows version {SCHEMA_VERSION}" in res.stderr), res.stderr[-2000:]
    finally:
        admin.kv_put(SCHEMA, str(SCHEMA_VERSION))


def test_every_part_may_read_the_version_and_only_gatekeeper_may_write_it(consul):
    ConsulClient(consul.address, token=consul.management_token).kv_put(SCHEMA, str(SCHEMA_VERSION))
    for part in ("registrator", "proxy-reloader", "operator", "breakglass", "gatekeeper"):
        client = ConsulClient(consul.address, token=open(consul.token_file(part)).read().strip())
        assert client.kv_get(SCHEMA)[1] is not None, part
        if part == "gatekeeper":
            assert client.kv_put(SCHEMA, str(SCHEMA_VERSION))
        else:
            with pytest.raises(ACLPermissionDenied):
                client.kv_put(SCHEMA, "7")
