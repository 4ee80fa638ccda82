"""HTTPS at the edge, on real Consul, nginx, curl and openssl-made certificates: certificates
picked by SNI from the pushed table, from a folder, from Consul (`proxy-reloader cert`) and from
the local CA; rotated under keep-alive TLS load with no failed request and no reload; bad
certificates refused with the previous one still served; plain HTTP redirected; HSTS.

Instances are registered straight into Consul with their gates passed by the test (as in
test_routing_modes); each answers with its name, version and the X-Forwarded-Proto it got."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import replace

import pytest

from catalog import local_ca, route_settings
from catalog.certificates import parse
from catalog.model import Instance
from catalog.stores.certificates import CertificateStore
from testbed.http_backend import LoopbackHTTP, closed_port, read_body, reply_json
from testbed.load import KeepAliveLoad
from testbed.nginx_workers import WorkerGenerations
from testbed.processes import ROOT, Proc, get_json, pid_alive, python_module, wait_until
from testbed.tls import TLSConnection, client_context, fingerprint, make_cert, served_fingerprint

pytestmark = pytest.mark.e2e

LISTEN, TLS, ADMIN = 18040, 18440, 19040


class Backend(LoopbackHTTP):
    def __init__(self, name: str, version: str):
        def answer(handler):
            read_body(handler)
            reply_json(handler, {"name": name, "version": version, "method": handler.command,
                                 "proto": handler.headers.get("X-Forwarded-Proto")})
        super().__init__(answer)


class Proxy:
    def __init__(self, base, proc, consul_server):
        self.base, self.proc, self.consul_server = base, proc, consul_server
        self.cert_dir, self.ca_dir, self.prefix = base / "certs", base / "ca", base / "nginx"

    @property
    def master(self) -> int:
        return int((self.prefix / "nginx.pid").read_text())

    def status(self):
        return get_json(ADMIN, "/status")[1]

    def certificate(self, name):
        return self.status()["certificates"].get(name)

    def cli(self, *args, token="operator"):
        return subprocess.run([str(ROOT / ".venv" / "bin" / "proxy-reloader"), "cert", *args, "--consul",
                               self.consul_server.address, "--consul-token-file",
                               self.consul_server.token_file(token)], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def proxy(consul_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("https")
    (base / "certs").mkdir()
    proc = Proc("proxy-reloader", python_module(
        "proxy_reloader", "--consul", consul_server.address, "--consul-token-file",
        consul_server.token_file("proxy-reloader"), "--nginx-prefix", str(base / "nginx"),
        "--listen", f"127.0.0.1:{LISTEN}", "--tls-listen", f"127.0.0.1:{TLS}", "--admin", f"127.0.0.1:{ADMIN}",
        "--cert-dir", str(base / "certs"), "--local-ca", str(base / "ca"), "--exec"), base).start()
    px = Proxy(base, proc, consul_server)
    wait_until(lambda: px.status()["served_version"], 30, "proxy-reloader up")
    yield px
    master = px.master
    proc.stop()
    wait_until(lambda: not pid_alive(master), 15, "nginx stopped with proxy-reloader")


@pytest.fixture
def service(proxy, stores, unique):
    """A fresh service at host UNIQUE.test (and the labels given), its instances and certificates
    cleaned up after the test."""
    made = []

    def add(version, host=None, **labels):
        b = Backend(f"{unique}-{len(made)}", version)
        inst = Instance(id=f"https:{unique}-{len(made)}:8080", service=unique, address="127.0.0.1", port=b.port,
                        version=version, container_id=f"c{unique}{len(made)}", container_name=f"{unique}-{len(made)}",
                        image="x:1", registered_by="registrator@https",
                        proxy_host=route_settings.parse_hosts("proxy.host", host or f"{unique}.test"),
                        proxy_path=f"/{unique}/",
                        route_settings=route_settings.from_labels({f"proxy.{k}": v for k, v in labels.items()}))
        stores.instances.register(inst)
        stores.instances.apply_gate(inst, True, "passed (set by the test)")
        made.append((inst, b))
        wait_until(lambda: unique in proxy.status()["services"], 30, "routed")
        return b
    add.name = unique
    add.host = f"{unique}.test"
    yield add
    for inst, b in made:
        stores.instances.deregister(inst.id)
        b.close()
    stores.consul.kv_delete_tree("certificates/")
    for f in proxy.cert_dir.iterdir():
        f.unlink()


def curl(*args):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30)
    return out


def ca_of(proxy) -> str:
    return str(proxy.ca_dir / "root.crt")


def test_http2_over_tls_with_the_local_ca_and_plain_http_redirected(proxy, service):
    """A routed host with no certificate gets one from the local CA; curl trusting the CA's root
    speaks HTTP/2 to it; the instance learns the request came over HTTPS; plain HTTP is redirected
    with 308 (the method kept) to the same URL over HTTPS."""
    service("v1")
    host = service.host
    wait_until(lambda: (proxy.certificate(host) or {}).get("source") == "local-ca", 30, "the local CA's certificate")
    out = curl("--http2", "--cacert", ca_of(proxy), "--resolve", f"{host}:{TLS}:127.0.0.1",
               "-w", "\n%{http_version}", f"https://{host}:{TLS}/{service.name}/x")
    assert out.returncode == 0, out.stderr
    body, version = out.stdout.rsplit("\n", 1)
    assert version == "2" and json.loads(body)["version"] == "v1" and json.loads(body)["proto"] == "https"
    # plain HTTP to a host with a certificate: 308 to HTTPS, the query kept
    out = curl("-X", "POST", "-d", "x", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
               "-H", f"Host: {host}", f"http://127.0.0.1:{LISTEN}/{service.name}/x?a=1")
    assert out.stdout == f"308 https://{host}:{TLS}/{service.name}/x?a=1"
    # ... which curl follows with the method kept
    out = curl("-L", "-X", "POST", "-d", "x", "--cacert", ca_of(proxy), "--resolve", f"{host}:{LISTEN}:127.0.0.1",
               "--resolve", f"{host}:{TLS}:127.0.0.1", f"http://{host}:{LISTEN}/{service.name}/x")
    assert json.loads(out.stdout)["method"] == "POST", out.stderr
    # the stack's CA is no public one: a client that does not trust it refuses the certificate
    out = curl("--resolve", f"{host}:{TLS}:127.0.0.1", f"https://{host}:{TLS}/{service.name}/x")
    assert out.returncode == 60, out.stderr       # curl: peer certificate cannot be authenticated
    # gatekeeper status names the certificate each of the route's host names gets
    status = subprocess.run([str(ROOT / ".venv" / "bin" / "gatekeeper"), "--consul", proxy.consul_server.address,
                             "--consul-token-file", proxy.consul_server.token_file("operator"), "status",
                             service.name, "--json"], capture_output=True, text=True, timeout=30)
    https = json.loads(status.stdout)["services"][0]["https"][host]
    assert https["source"] == "local-ca" and https["issuer"] == "proxystack local CA" and 89 < https["days_left"] <= 90
    text = subprocess.run([str(ROOT / ".venv" / "bin" / "gatekeeper"), "--consul", proxy.consul_server.address,
                           "--consul-token-file", proxy.consul_server.token_file("operator"), "status", service.name],
                          capture_output=True, text=True, timeout=30).stdout
    assert f"https    {host}: certificate {host} (local-ca), issuer proxystack local CA" in text


def test_https_modes_and_hsts_per_route(proxy, service, stores, unique):
    service("v1", host=f"{unique}.test", https="only", hsts="max-age=600;includeSubDomains")
    host = service.host
    wait_until(lambda: proxy.certificate(host), 30, "a certificate")
    out = curl("-D", "-", "--cacert", ca_of(proxy), "--resolve", f"{host}:{TLS}:127.0.0.1",
               f"https://{host}:{TLS}/{service.name}/x")
    assert "strict-transport-security: max-age=600; includesubdomains\n" in out.stdout.lower()
    out = curl("-w", "%{http_code}", "-H", f"Host: {host}", f"http://127.0.0.1:{LISTEN}/{service.name}/x")
    assert out.stdout.endswith("403") and "served over HTTPS only" in out.stdout
    assert "strict-transport-security" not in curl("-D", "-", "-H", f"Host: {host}",
                                                   f"http://127.0.0.1:{LISTEN}/{service.name}/x").stdout.lower()
    # the proxy's own answers over HTTPS carry it too: the instance moved to where nothing listens, a 502
    moved = replace(stores.instances.of(service.name)[0].instance, port=closed_port())
    stores.instances.register(moved)
    stores.instances.apply_gate(moved, True, "passed (set by the test)")
    https = ["-D", "-", "--cacert", ca_of(proxy), "--resolve", f"{host}:{TLS}:127.0.0.1",
             f"https://{host}:{TLS}/{service.name}/x"]
    wait_until(lambda: curl(*https).stdout.startswith("HTTP/2 502"), 10, "a 502 from the proxy")
    assert "strict-transport-security: max-age=600" in curl(*https).stdout.lower()


def test_an_unknown_name_fails_the_handshake_until_a_default_certificate_exists(proxy, service, stores, unique):
    with pytest.raises(ssl.SSLError):
        served_fingerprint(TLS, f"nobody-{unique}.test")
    ca, _ = local_ca.ensure(proxy.base / "other-ca")
    chain, key = make_cert(ca, ["fallback.test"])
    (proxy.cert_dir / "default.crt").write_text(chain)
    (proxy.cert_dir / "default.key").write_text(key)
    wait_until(lambda: served_fingerprint(TLS, f"nobody-{unique}.test") == fingerprint(chain), 10,
               "the default certificate served")
    assert served_fingerprint(TLS, None) == fingerprint(chain)         # a client without SNI too


def test_a_rotated_certificate_reaches_new_handshakes_with_no_failed_request_and_no_reload(proxy, service, stores):
    """20 keep-alive TLS clients that never retry; the host's certificate rotated in the folder
    and then in Consul: 0 failed requests, no new nginx worker, and each new certificate served
    to new handshakes within a second."""
    service("v1")
    host = service.host
    ca, _ = local_ca.ensure(proxy.base / "other-ca")
    first, first_key = make_cert(ca, [host])
    (proxy.cert_dir / f"{host}.key").write_text(first_key)
    (proxy.cert_dir / f"{host}.crt").write_text(first)
    wait_until(lambda: served_fingerprint(TLS, host) == fingerprint(first), 10, "the folder's certificate")
    ctx = ssl.create_default_context(cafile=str(ca.folder / "root.crt"))
    load = KeepAliveLoad("127.0.0.1", TLS, path=f"/{service.name}/x", connections=20, rate=20,
                         max_seconds=60, connect=lambda: TLSConnection("127.0.0.1", TLS, host, ctx)).start()
    generations = WorkerGenerations(proxy.master)
    generations.start()
    took = []
    time.sleep(1)
    second, second_key = make_cert(ca, [host])
    (proxy.cert_dir / f"{host}.key.new").write_text(second_key)      # both files replaced at once
    (proxy.cert_dir / f"{host}.crt.new").write_text(second)
    started = time.monotonic()
    (proxy.cert_dir / f"{host}.key.new").rename(proxy.cert_dir / f"{host}.key")
    (proxy.cert_dir / f"{host}.crt.new").rename(proxy.cert_dir / f"{host}.crt")
    wait_until(lambda: served_fingerprint(TLS, host) == fingerprint(second), 10, "the rotated file served")
    took.append(time.monotonic() - started)
    time.sleep(1)
    # in Consul: a file wins over Consul for the same name, so the file goes first
    third, third_key = make_cert(ca, [host])
    for f in proxy.cert_dir.iterdir():
        f.unlink()
    started = time.monotonic()
    assert CertificateStore(stores.consul).put(parse(host, third, third_key, "operator"))
    wait_until(lambda: served_fingerprint(TLS, host) == fingerprint(third), 10, "the certificate from Consul served")
    took.append(time.monotonic() - started)
    time.sleep(1)
    load.finish()
    assert load.failures == [] and load.total > 500, (load.total, load.failures[:5])
    assert generations.finish() == 0, "a certificate change started new nginx workers (a reload)"
    # about 0.1 s each (bench.tls_bench measures it); the bound leaves room for a loaded 2-core machine
    assert max(took) < 2.0, f"new handshakes got the new certificate after {took} s"
    print(f"rotation: {load.total} requests, 0 failed; new certificate served after {took} s")


def test_bad_certificates_are_refused_with_the_reason_and_the_previous_one_keeps_serving(proxy, service, tmp_path):
    service("v1")
    host = service.host
    ca, _ = local_ca.ensure(proxy.base / "other-ca")
    good, good_key = make_cert(ca, [host])
    (tmp_path / "good.crt").write_text(good)
    (tmp_path / "good.key").write_text(good_key)
    added = proxy.cli("add", host, "--cert", str(tmp_path / "good.crt"), "--key", str(tmp_path / "good.key"))
    assert added.returncode == 0, added.stderr
    wait_until(lambda: served_fingerprint(TLS, host) == fingerprint(good), 10, "the added certificate")
    other_key = make_cert(ca, [host])[1]
    expired = make_cert(ca, [host], starts=-10, days=5)
    elsewhere = make_cert(ca, [f"elsewhere.{host}"])
    cases = {
        "not PEM": ("hello\n", good_key, "the certificate is not valid PEM"),
        "another key": (good, other_key, "the private key does not belong to the certificate"),
        "expired": (*expired, "the certificate expired on"),
        "other names": (*elsewhere, f"do not cover {host}"),
    }
    for what, (chain, key, reason) in cases.items():
        (tmp_path / "c.crt").write_text(chain)
        (tmp_path / "c.key").write_text(key)
        out = proxy.cli("add", host, "--cert", str(tmp_path / "c.crt"), "--key", str(tmp_path / "c.key"))
        assert out.returncode == 2 and reason in out.stderr and "nothing stored" in out.stderr, (what, out.stderr)
    listed = json.loads(proxy.cli("list", "--json").stdout)
    assert listed[host]["source"] == "operator" and listed[host]["fingerprint"] == fingerprint(good)
    # a bad file in the folder: reported in status, and the name keeps what it had from there
    (proxy.cert_dir / f"{host}.crt").write_text(good)
    (proxy.cert_dir / f"{host}.key").write_text(good_key)
    wait_until(lambda: (proxy.certificate(host) or {}).get("source") == "files", 10, "the folder's certificate")
    (proxy.cert_dir / f"{host}.key").write_text(other_key)
    wait_until(lambda: proxy.status()["certificate_errors"].get(f"files: {host}"), 10, "the bad file reported")
    assert "does not belong to the certificate" in proxy.status()["certificate_errors"][f"files: {host}"]
    assert served_fingerprint(TLS, host) == fingerprint(good)
    assert proxy.certificate(host)["source"] == "files"
    # removed from Consul and the folder: the local CA issues one
    assert proxy.cli("remove", host).returncode == 0
    for f in proxy.cert_dir.iterdir():
        f.unlink()
    wait_until(lambda: (proxy.certificate(host) or {}).get("source") == "local-ca", 10, "the local CA's certificate")
    assert proxy.cli("remove", f"nothing.{host}").returncode == 1


def test_certificates_are_kept_in_the_table_file_readable_by_its_owner_only(proxy, service):
    service("v1")
    wait_until(lambda: proxy.certificate(service.host), 30, "a certificate")
    # and their days left are a metric, which the expiry alert reads
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    line = next(l for l in metrics.splitlines()
                if l.startswith("proxystack_certificate_days_left{") and f'name="{service.host}"' in l)
    assert 'source="local-ca"' in line and 89 < float(line.rsplit(" ", 1)[1]) <= 90
    table = proxy.prefix / "backends.json"
    assert oct(table.stat().st_mode & 0o777) == "0o600"
    assert service.host in json.loads(table.read_text())["certificates"]
    assert shutil.which("curl")


def days_left_names(proxy_admin=ADMIN):
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy_admin}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {l.split('name="', 1)[1].split('"', 1)[0] for l in lines if l.startswith("proxystack_certificate_days_left{")}


def test_a_certificate_the_stack_issued_for_a_host_no_longer_routed_is_not_watched_for_expiry(proxy, service, stores):
    """It stays served (until `cert remove`) but is no longer renewed: its days left would fall
    under the alert's 14 and below zero, an alert for a host nobody serves."""
    service("v1")
    wait_until(lambda: service.host in days_left_names(), 30, "the local CA's certificate watched")
    for ri in stores.instances.of(service.name):
        stores.instances.deregister(ri.instance.id)
    wait_until(lambda: service.name not in proxy.status()["services"], 30, "the route gone")
    wait_until(lambda: service.host not in days_left_names(), 10, "no days-left series for it")
    assert (proxy.certificate(service.host) or {}).get("source") == "local-ca", "still served"
