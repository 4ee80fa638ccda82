"""Certificates: the rules a certificate must keep before any proxy serves it, which certificate
a host gets (the same answer in Python and in nginx's Lua side), the sources' precedence and
last-good rule, the local CA, and what proxy-reloader pushes when a certificate changes.
(Real-parts twin: tests/e2e/test_https.py.)"""
from __future__ import annotations

import json
import time

import pytest

from catalog import local_ca, route_settings
from catalog.certificates import CertificateRefused, covers, lookup_names, parse, renew_due, serving
from catalog.validation import InvalidValue
from proxy_reloader.certificates import CertificateBook, LocalIssuer
from testbed.tls import fingerprint, make_cert
from tests.support.lua import run_lua
from tests.unit.test_push_delta import FakeNginxTable, route, runner


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return local_ca.ensure(tmp_path_factory.mktemp("ca"))[0]


def test_a_valid_certificate_is_described_without_its_key(ca):
    chain, key = make_cert(ca, ["demo.test", "*.demo.test"])
    cert = parse("demo.test", chain, key, "operator")
    summary = cert.summary()
    assert summary["sans"] == ["demo.test", "*.demo.test"] and summary["issuer"] == "proxystack local CA"
    assert 28.9 < summary["days_left"] <= 29 and summary["fingerprint"] == fingerprint(chain)
    assert "PRIVATE" not in json.dumps(summary) and "PRIVATE" not in repr(cert)
    assert parse("*.demo.test", chain, key, "files").name == "*.demo.test"
    assert parse("default", chain, key, "files").name == "default"     # a default one covers any name


@pytest.mark.parametrize("case,reason", [
    ("not pem", "the certificate is not valid PEM"),
    ("key not pem", "the private key is not an unencrypted PEM key"),
    ("other key", "the private key does not belong to the certificate"),
    ("expired", "the certificate expired on"),
    ("expires soon", "the certificate expires within the hour"),
    ("not yet", "the certificate is not valid before"),
    ("other names", "do not cover demo.test"),
    ("wildcard too deep", "do not cover demo.test"),
    ("bad name", "is not a certificate name"),
    ("empty", "the certificate is empty"),
    ("huge", "at most 65536 are taken"),
])
def test_each_rule_refuses_with_its_reason(ca, case, reason):
    chain, key = make_cert(ca, ["demo.test"])
    name = "demo.test"
    if case == "not pem":
        chain = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    elif case == "key not pem":
        key = "secret"
    elif case == "other key":
        key = make_cert(ca, ["demo.test"])[1]
    elif case == "expired":
        chain, key = make_cert(ca, ["demo.test"], starts=-3, days=1)
    elif case == "expires soon":
        chain, key = make_cert(ca, ["demo.test"], starts=-1, days=1 + 1 / 48)
    elif case == "not yet":
        chain, key = make_cert(ca, ["demo.test"], starts=2)
    elif case == "other names":
        chain, key = make_cert(ca, ["other.test"])
    elif case == "wildcard too deep":
        chain, key = make_cert(ca, ["*.test"])
        name = "a.demo.test"
        reason = "do not cover a.demo.test"
    elif case == "bad name":
        name = "Demo.test"
    elif case == "empty":
        chain = ""
    elif case == "huge":
        chain = chain * 200
    with pytest.raises(CertificateRefused, match=reason.replace("(", r"\(").replace(".", r"\.")):
        parse(name, chain, key, "operator")


def test_text_around_the_pem_blocks_is_not_kept(ca):
    chain, key = make_cert(ca, ["demo.test"])
    cert = parse("demo.test", "Bag Attributes\n    localKeyID: 01\n" + chain, "Key Attributes: <No Attributes>\n" + key,
                 "files")
    assert cert.chain.startswith("-----BEGIN CERTIFICATE-----") and cert.key.startswith("-----BEGIN PRIVATE KEY-----")
    assert CertificateBook().for_push() == {}


def test_the_local_ca_skips_a_host_no_certificate_can_name(ca):
    store = FakeCertificateStore()
    assert LocalIssuer(ca, store).issue(["*.localhost", "ok.test"], {}) == 1 and list(store.certs) == ["ok.test"]


NAMES = ["demo.test", "*.example.test", "default"]
HOSTS = ["demo.test", "a.example.test", "a.b.example.test", "example.test", "other.test", "", "test",
         ".example.test", "a.demo.test"]


def test_which_certificate_a_host_gets_is_the_same_in_python_and_in_nginx(tmp_path):
    python = [[serving(NAMES, h), serving(NAMES, h) not in (None, "default")] for h in HOSTS]
    assert python[:5] == [["demo.test", True], ["*.example.test", True], ["default", False],
                          ["default", False], ["default", False]]
    assert run_lua("certnames", {"names": NAMES, "hosts": HOSTS}, tmp_path) == python
    without_default = [n for n in NAMES if n != "default"]
    assert run_lua("certnames", {"names": without_default, "hosts": ["other.test"]}, tmp_path) == [[None, False]]


def test_a_wildcard_covers_one_level_only():
    assert covers("*.example.test", "a.example.test") and not covers("*.example.test", "a.b.example.test")
    assert not covers("*.example.test", "example.test") and covers("DEMO.test", "demo.test")
    assert lookup_names("a.example.test") == ("a.example.test", "*.example.test", "default")


def test_https_and_hsts_labels_are_checked_and_pushed_as_the_contract_says():
    assert route_settings.for_proxy(route_settings.from_labels(
        {"proxy.https": "only", "proxy.hsts": "max-age=31536000; includeSubDomains"})) == {
        "https": "only", "hsts_max_age": 31536000, "hsts_subdomains": True}
    assert route_settings.check("hsts", "MAX-AGE=60") == "max-age=60"
    for key, bad in (("https", "always"), ("hsts", "max-age=63072001"), ("hsts", "max-age=1; preload"),
                     ("hsts", "60")):
        with pytest.raises(InvalidValue):
            route_settings.check(key, bad)


def write(folder, stem, chain, key):
    (folder / f"{stem}.crt").write_text(chain)
    (folder / f"{stem}.key").write_text(key)


def test_a_folder_wins_over_consul_and_a_bad_file_keeps_the_last_good_certificate(ca, tmp_path):
    chain, key = make_cert(ca, ["demo.test"])
    book = CertificateBook(tmp_path)
    kv_chain, kv_key = make_cert(ca, ["demo.test"])
    book.take_kv({"certificates/chains/demo.test": json.dumps({"cert": kv_chain, "source": "operator"}),
                  "certificates/keys/demo.test": kv_key})
    assert book.serving()["demo.test"].source == "operator"
    write(tmp_path, "demo.test", chain, key)
    assert book.scan_files() and book.serving()["demo.test"].source == "files"
    assert not book.scan_files()                                    # nothing changed: not read again
    write(tmp_path, "demo.test", chain, make_cert(ca, ["demo.test"])[1])
    assert not book.scan_files()                                    # refused: what is served is unchanged
    assert book.serving()["demo.test"].fingerprint == fingerprint(chain)
    assert "does not belong" in book.errors()["files: demo.test"]
    (tmp_path / "demo.test.crt").unlink()
    (tmp_path / "demo.test.key").unlink()
    assert book.scan_files() and book.serving()["demo.test"].source == "operator" and book.errors() == {}


def test_folder_file_names_map_to_certificate_names(ca, tmp_path):
    write(tmp_path, "_wildcard.example.test", *make_cert(ca, ["*.example.test"]))
    write(tmp_path, "default", *make_cert(ca, ["anything.test"]))
    (tmp_path / "lonely.test.crt").write_text(make_cert(ca, ["lonely.test"])[0])
    write(tmp_path, "Bad Name", *make_cert(ca, ["x.test"]))
    book = CertificateBook(tmp_path)
    book.scan_files()
    assert set(book.serving()) == {"*.example.test", "default"}
    errors = book.errors()
    assert "needs its HOST.key beside it" in errors["files: lonely.test"]
    assert "the file name is no certificate name" in errors["files: Bad Name"]


def test_a_key_missing_in_consul_is_reported_not_served(ca):
    book = CertificateBook()
    book.take_kv({"certificates/chains/demo.test": json.dumps({"cert": make_cert(ca, ["demo.test"])[0],
                                                               "source": "operator"})})
    assert book.serving() == {} and "has no private key in Consul" in book.errors()["Consul: demo.test"]


class FakeCertificateStore:
    """catalog.stores.certificates.CertificateStore's check-and-set, in memory."""

    def __init__(self):
        self.certs, self.indexes, self.next = {}, {}, 10

    def index_of(self, name):
        return self.indexes.get(name, 0)

    def put(self, cert, cas=None):
        if cas is not None and cas != self.indexes.get(cert.name, 0):
            return False
        self.next += 1
        self.certs[cert.name], self.indexes[cert.name] = cert, self.next
        return True


def test_the_local_ca_issues_for_hosts_without_a_certificate_and_renews_its_own(ca, tmp_path):
    store = FakeCertificateStore()
    issuer = LocalIssuer(ca, store)
    own = parse("mine.test", *make_cert(ca, ["mine.test"]), "operator")
    wild = parse("*.wild.test", *make_cert(ca, ["*.wild.test"]), "operator")
    fallback = parse("default", *make_cert(ca, ["x.test"]), "files")
    serving_now = {"mine.test": own, "*.wild.test": wild, "default": fallback}
    assert issuer.issue(["new.test", "mine.test", "a.wild.test", "new.test"], serving_now) == 1
    issued = store.certs["new.test"]
    assert issued.source == "local-ca" and issued.sans == ("new.test",) and issued.issuer == "proxystack local CA"
    serving_now["new.test"] = issued
    assert issuer.issue(["new.test"], serving_now) == 0                       # not due yet
    assert not renew_due(issued) and renew_due(issued, now=issued.not_before + 61 * 86400)
    old = parse("old.test", *make_cert(ca, ["old.test"], starts=-21, days=30), "local-ca")
    store.indexes["old.test"] = 5
    assert issuer.issue(["old.test"], {**serving_now, "old.test": old}) == 1  # two thirds gone: renewed
    assert store.certs["old.test"].not_after > old.not_after
    # another proxy's certificate in Consul but not read here yet: not issued twice
    store.indexes["race.test"] = 7
    assert issuer.issue(["race.test"], serving_now) == 0
    # the default certificate, for the names clients without a certificate of their own use
    with_default = LocalIssuer(ca, store, default_names=["localhost", "127.0.0.1"])
    assert with_default.issue([], serving_now) == 0                          # the folder's default wins
    del serving_now["default"]
    assert with_default.issue([], serving_now) == 1
    assert store.certs["default"].sans == ("localhost", "127.0.0.1") and store.certs["default"].source == "local-ca"


def test_a_certificate_change_pushes_that_certificate_only(ca, tmp_path):
    folder = tmp_path / "certs"
    folder.mkdir()
    table = FakeNginxTable()
    r = runner(tmp_path, table)
    r.certificates = CertificateBook(folder)
    write(folder, "a.test", *make_cert(ca, ["a.test"]))
    r.certificates.scan_files()
    assert r._push_table([route("a", 1)])
    assert table.bodies[-1]["full"] is True and set(table.bodies[-1]["certificates"]) == {"a.test"}
    write(folder, "b.test", *make_cert(ca, ["b.test"]))
    r.certificates.scan_files()
    assert r._push_table([route("a", 1)])
    assert table.bodies[-1]["services"] == {} and set(table.bodies[-1]["certificates"]) == {"b.test"}
    (folder / "a.test.crt").unlink()
    r.certificates.scan_files()
    assert r._push_table([route("a", 1)])
    assert table.bodies[-1]["certificates"] == {"a.test": None}
    saved = json.loads((tmp_path / "backends.json").read_text())
    assert set(saved["certificates"]) == {"b.test"} and oct((tmp_path / "backends.json").stat().st_mode & 0o777) == "0o600"
    pushes = len(table.bodies)
    assert r._push_table([route("a", 1)]) and len(table.bodies) == pushes     # nothing changed: no push


class FakeConsul:
    def __init__(self, keys=()):
        self.keys = list(keys)

    def kv_keys(self, prefix):
        return [k for k in self.keys if k.startswith(prefix)]


def test_what_the_acme_issuer_orders(ca):
    """Hosts with nothing or only the local CA's certificate, its own past two thirds of their life,
    renewals asked for and orders under way; never a wildcard, never the operator's certificates.
    (Real-parts twin: tests/e2e/test_acme.py, against pebble.)"""
    from catalog.kv_layout import ACME_ORDERS, ACME_RENEW
    from proxy_reloader.acme_issuer import AcmeIssuer
    issuer = AcmeIssuer(FakeConsul([ACME_RENEW + "asked.test", ACME_ORDERS + "resumed.test"]), "https://acme.test/dir")
    cert = lambda name, source, **kw: parse(name, *make_cert(ca, [name], **kw), source)  # noqa: E731
    issuer.update(["new.test", "*.wild.test", "mine.test", "file.test", "local.test", "fresh.test", "old.test",
                   "asked.test"],
                  {"mine.test": cert("mine.test", "operator"), "file.test": cert("file.test", "files"),
                   "local.test": cert("local.test", "local-ca"), "fresh.test": cert("fresh.test", "acme", days=90),
                   "old.test": cert("old.test", "acme", starts=-61, days=90),
                   "asked.test": cert("asked.test", "acme", days=90)})
    assert issuer.due() == {"asked.test": "renewal asked for", "local.test": "only the local CA's certificate",
                            "new.test": "no certificate", "old.test": "two thirds of its life gone",
                            "resumed.test": "an order under way"}
    issuer.recent["new.test"] = (cert("new.test", "acme", days=90), time.monotonic())   # not yet back from Consul
    assert "new.test" not in issuer.due()
    issuer.recent["new.test"] = (cert("new.test", "acme", days=90), time.monotonic() - 31)
    assert "new.test" in issuer.due() and "new.test" not in issuer.recent       # removed since: ordered again
    # the operator's certificates, exact or wildcard, are never replaced: a renewal asked for or an
    # order under way for such a host is dropped
    issuer.hosts = issuer.hosts | {"w.example.test"}
    issuer.serving["*.example.test"] = cert("*.example.test", "operator")
    issuer.serving["asked.test"] = issuer.serving["resumed.test"] = cert("asked.test", "operator")
    issuer.consul.kv_get = lambda key: (0, None)
    issuer.consul.kv_delete = lambda key: issuer.consul.keys.remove(key) if key in issuer.consul.keys else None
    due = issuer.due()
    assert "w.example.test" not in due and "asked.test" not in due and "resumed.test" not in due
    assert issuer.consul.keys == []                                    # the request and the order are dropped
    # a failing host is tried again later, and less often each time
    issuer._failed("new.test", "boom")
    first = issuer.retry_at["new.test"][1]
    issuer._failed("new.test", "boom")
    assert issuer.retry_at["new.test"][1] == 2 * first and "local.test" in issuer.due() and "new.test" not in issuer.due()


def test_a_bad_acme_challenge_in_consul_is_left_out_not_pushed(ca):
    book = CertificateBook()
    assert book.take_kv({"certificates/acme/challenges/good-Token_1": "good-Token_1.thumb",
                         "certificates/acme/challenges/bad": "bad.<script>",
                         "certificates/acme/challenges/a b": "x.y"})
    assert book.challenges == {"good-Token_1": "good-Token_1.thumb"}
