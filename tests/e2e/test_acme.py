"""Certificates from an ACME CA, on real parts: pebble (an RFC 8555 test server, offline) with
its DNS stand-in, Consul, and two proxies (nginx under proxy-reloader --acme-directory). pebble
validates HTTP-01 against the first proxy's address; whichever issuer leads, the challenge
reaches every proxy through Consul. A certificate is issued, served by both proxies and renewed;
the leading issuer killed in the middle of an order, the other resumes it: one certificate."""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time

import pytest
import requests

from catalog import route_settings
from catalog.kv_layout import ACME_LEADER, ACME_ORDERS
from catalog.model import Instance
from testbed.http_backend import LoopbackHTTP, read_body, reply_json
from testbed.pebble import Pebble
from testbed.processes import ROOT, Proc, get_json, pid_alive, python_module, wait_until
from testbed.tls import TLSConnection, served_fingerprint

pytestmark = pytest.mark.e2e

HTTP, TLS = 18050, 18450
ADDRESSES = {"p1": "127.0.0.1", "p2": "127.0.0.2"}       # pebble validates on p1's
ADMIN = {"p1": 19050, "p2": 19051}


def start_proxy(name, consul_server, pebble, base):
    addr = ADDRESSES[name]
    return Proc(f"proxy-reloader-{name}", python_module(
        "proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
        consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(base / name),
        "--listen", f"{addr}:{HTTP}", "--tls-listen", f"{addr}:{TLS}", "--admin", f"127.0.0.1:{ADMIN[name]}",
        "--acme-directory", pebble.directory, "--acme-ca-bundle", pebble.ca_bundle, "--exec"), base).start()


def status(name):
    return get_json(ADMIN[name], "/status")[1]


def leader(stores):
    entry = stores.consul.kv_entry(ACME_LEADER)
    return (entry or {}).get("Session") and (entry.get("Value") or b"").decode()


@pytest.fixture(scope="module")
def acme(consul_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("acme")
    pebble = Pebble(base / "pebble", http_port=HTTP).start()
    procs = {}
    try:
        # p2 first, so it leads: the kill test kills the leader and leaves p1, where pebble validates
        procs["p2"] = start_proxy("p2", consul_server, pebble, base)
        wait_until(lambda: status("p2")["acme"]["leader"], 30, "p2's issuer to lead")
        procs["p1"] = start_proxy("p1", consul_server, pebble, base)
        wait_until(lambda: status("p1")["served_version"], 30, "p1 up")
        yield pebble, procs, base
    finally:
        for name, proc in procs.items():
            pid_file = base / name / "nginx.pid"
            master = int(pid_file.read_text()) if pid_file.exists() else None
            proc.stop()
            if master and pid_alive(master):           # a proxy-reloader killed leaves its nginx
                os.kill(master, signal.SIGTERM)
                wait_until(lambda: not pid_alive(master), 15, "nginx stopped")
        pebble.stop()


@pytest.fixture
def service(acme, stores, unique):
    backends, made = [], []

    def add(host):
        b = LoopbackHTTP(lambda h: (read_body(h), reply_json(h, {"host": h.headers.get("Host")})))
        inst = Instance(id=f"acme:{unique}-{len(made)}:8080", service=unique, address="127.0.0.1", port=b.port,
                        version="v1", container_id=f"c{unique}{len(made)}", container_name=f"{unique}-{len(made)}",
                        image="x:1", registered_by="registrator@acme", proxy_path=f"/{unique}/",
                        proxy_host=route_settings.parse_hosts("proxy.host", host))
        stores.instances.register(inst)
        stores.instances.apply_gate(inst, True, "passed (set by the test)")
        backends.append(b)
        made.append(inst)
    add.name = unique
    yield add
    for inst in made:
        stores.instances.deregister(inst.id)
    for b in backends:
        b.close()


def acme_cert(name, host):
    return (status(name)["certificates"].get(host) or {}) if status(name).get("certificates") else {}


def issued_in_logs(base, host):
    return sum(((base / f"proxy-reloader-{n}.log").read_text(errors="replace") if (base / f"proxy-reloader-{n}.log").exists() else "")
               .count(f"ACME issuer: {host}: certificate issued") for n in ADDRESSES)


def test_a_certificate_is_issued_by_acme_served_by_every_proxy_and_renewed(acme, service, consul_server, unique):
    pebble, procs, base = acme
    host = f"{unique}.acme.test"
    service(host)
    wait_until(lambda: acme_cert("p1", host).get("source") == "acme" and acme_cert("p2", host).get("source") == "acme",
               60, "the ACME certificate on both proxies")
    first = acme_cert("p1", host)["fingerprint"]
    assert acme_cert("p2", host)["fingerprint"] == first and "Pebble" in acme_cert("p1", host)["issuer"]
    ctx = ssl.create_default_context(cadata=pebble.roots())           # trusting pebble's root alone
    for name, addr in ADDRESSES.items():
        assert served_fingerprint(TLS, host, addr) == first
        conn = TLSConnection(addr, TLS, host, ctx)
        conn.request("GET", f"/{service.name}/x")
        assert json.loads(conn.getresponse().read())["host"] == host
        conn.close()
    renew = subprocess.run([str(ROOT / ".venv/bin/proxy-reloader"), "cert", "renew", host, "--consul",
                            consul_server.address, "--consul-token-file", consul_server.token_file("operator")],
                           capture_output=True, text=True, timeout=30)
    assert renew.returncode == 0, renew.stderr
    wait_until(lambda: all(served_fingerprint(TLS, host, addr) not in (first,) for addr in ADDRESSES.values()), 60,
               "the renewed certificate served by both proxies")
    assert acme_cert("p1", host)["source"] == "acme" and issued_in_logs(base, host) == 2


def test_the_leading_issuer_killed_mid_order_the_other_resumes_it_and_one_certificate_results(acme, service, stores,
                                                                                                unique):
    pebble, procs, base = acme
    assert leader(stores).endswith(f"{ADDRESSES['p2']}:{HTTP}"), leader(stores)
    host = f"{unique}.acme.test"
    service(host)
    wait_until(lambda: stores.consul.kv_get(ACME_ORDERS + host)[1], 30, "p2's order under way", interval=0.01)
    procs["p2"].kill()                                  # SIGKILL: its session lives on until Consul expires it
    wait_until(lambda: leader(stores).endswith(f"{ADDRESSES['p1']}:{HTTP}"), 60, "p1's issuer to lead")
    wait_until(lambda: acme_cert("p1", host).get("source") == "acme", 60, "the certificate from the resumed order")
    wait_until(lambda: served_fingerprint(TLS, host, ADDRESSES["p1"]) == acme_cert("p1", host)["fingerprint"], 10,
               "the certificate served")
    assert "resuming order" in (base / "proxy-reloader-p1.log").read_text()
    time.sleep(2)                                       # nothing more is issued for it
    assert issued_in_logs(base, host) == 1
    assert stores.consul.kv_get(ACME_ORDERS + host)[1] is None


def test_a_ca_that_restarted_and_forgot_the_account_issues_again(acme, service, consul_server, unique):
    """pebble keeps accounts in memory, as a CA reset or a deactivated account would lose them: the
    issuer registers again instead of failing every order until it is restarted."""
    pebble, procs, base = acme
    host = f"{unique}.acme.test"
    service(host)
    wait_until(lambda: acme_cert("p1", host).get("source") == "acme", 60, "a certificate: the account registered")
    first = acme_cert("p1", host)["fingerprint"]
    pebble.proc.stop()
    pebble.proc.start()
    wait_until(lambda: requests.get(pebble.directory, verify=pebble.ca_bundle, timeout=2).status_code == 200, 30,
               "pebble back, without the issuer's account")
    renew = subprocess.run([str(ROOT / ".venv/bin/proxy-reloader"), "cert", "renew", host, "--consul",
                            consul_server.address, "--consul-token-file", consul_server.token_file("operator")],
                           capture_output=True, text=True, timeout=30)
    assert renew.returncode == 0, renew.stderr
    wait_until(lambda: acme_cert("p1", host).get("fingerprint") not in (None, first), 90,
               "the certificate renewed by the restarted CA")
    wait_until(lambda: served_fingerprint(TLS, host, ADDRESSES["p1"]) == acme_cert("p1", host)["fingerprint"], 10,
               "the renewed certificate served")
