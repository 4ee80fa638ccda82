"""proxy-reloader's runner beyond routes: its options reach the config nginx runs, its log says
what each reload and push changed, certificates and ACME answers survive an nginx restart, the
local CA and the ACME issuer are told what is routed (and their failures never stop the proxy),
and `--once` carries certificates too. (Real-nginx twins: tests/e2e/test_https.py,
tests/e2e/test_acme.py, tests/e2e/test_proxy_reloader.py.)"""
import json
import logging
from types import SimpleNamespace

import pytest
import requests
from prometheus_client import REGISTRY

from catalog.routing import Pool, Route
from proxy_reloader.render import DYNAMIC, RELOAD, Settings
from proxy_reloader.runner import Runner, RunnerOptions, render_once
from tests.support.fakes import FakeNginx
from tests.unit.test_push_delta import FakeNginxTable, route
from tests.unit.test_reloader_apply import Push, Stores, reg

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


def pem(tag):
    return {"cert": f"-----BEGIN CERTIFICATE-----\n{tag}\n", "key": f"-----BEGIN KEY-----\n{tag}\n"}


class Book:
    """A certificate book that serves `certs` and ACME `challenges`, and records what Consul gave it."""

    def __init__(self, certs=None, challenges=None):
        self.certs, self.challenges = dict(certs or {}), dict(challenges or {})
        self.folder, self.taken, self.scans = None, [], 0

    def for_push(self):
        return dict(self.certs)

    def serving(self):
        return {n: f"served {n}" for n in self.certs}

    def scan_files(self):
        self.scans += 1
        return False

    def take_kv(self, items):
        self.taken.append(items)
        return False

    def status(self):
        return {"certificates": sorted(self.certs), "certificate_errors": {}}


class Issuer:
    """The local CA or the ACME issuer: records each call; `fail` is raised by the next one."""

    def __init__(self):
        self.calls, self.fail = [], None

    def issue(self, hosts, serving):
        self.calls.append((sorted(hosts), serving))
        if self.fail:
            exc, self.fail = self.fail, None
            raise exc
        return 0

    update = issue

    def status(self):
        return {"orders": len(self.calls)}


def hosted(service, host, port):
    return Route(service, "/", host, Pool("v1", (("127.0.0.1", port),), ("v1",)))


def runner(tmp_path, mode=DYNAMIC, **kwargs):
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in RunnerOptions.__dataclass_fields__}
    return Runner(SimpleNamespace(disrupted_at=0.0), FakeNginx(tmp_path), RunnerOptions(mode=mode, **options),
                  push=kwargs.pop("push", FakeNginxTable()), **kwargs)


def serve(r, *routes):
    r.computed = {x.service: x for x in routes}
    r.invalid = {}
    r._apply()


# --- the options in the config ---------------------------------------------------------------

def test_every_option_reaches_the_dynamic_config_which_is_rendered_once(tmp_path):
    r = runner(tmp_path, listen="127.0.0.1:8123", workers="3", modules="/opt/mods", read_timeout="7s",
               grpc_listen="127.0.0.1:8124", tls_listen="127.0.0.1:8125")
    text = r._render([route("a", 1)])
    for line in ("worker_processes 3;", f"pid {tmp_path}/nginx.pid;", "load_module /opt/mods/ngx_http_lua_module.so;",
                 "proxy_read_timeout 7s;", "listen 127.0.0.1:8123 default_server;", "listen 127.0.0.1:8124 http2;",
                 "listen 127.0.0.1:8125 ssl http2 default_server;"):
        assert line in text, line
    assert "127.0.0.1:1" not in text, "no route in the dynamic config"
    assert r._render([route("b", 2)]) is text, "the same text for any routes, rendered once"


def test_every_option_reaches_the_reload_config_with_its_routes(tmp_path):
    r = runner(tmp_path, mode=RELOAD, listen="127.0.0.1:8123", workers="3", read_timeout="7s")
    text = r._render([route("a", 1)])
    for line in ("worker_processes 3;", f"pid {tmp_path}/nginx.pid;", "proxy_read_timeout 7s;",
                 "listen 127.0.0.1:8123 default_server;", "server 127.0.0.1:1 max_fails=0;"):
        assert line in text, line
    assert "load_module" not in text and r._render([route("a", 2)]) != text


# --- what the log says -------------------------------------------------------------------------

def test_each_reload_logs_what_every_service_is_served_by(tmp_path, caplog):
    r = runner(tmp_path, mode=RELOAD)
    both = Route("a", "/a/", "", Pool("v1", (("127.0.0.1", 1), ("127.0.0.1", 2)), ("v1", "v1")),
                 canary=Pool("v2", (("127.0.0.1", 3),), ("v2",)), weight=10)
    caplog.set_level(logging.INFO, "proxy_reloader.runner")
    serve(r, Route("b", "/b/", "", None), both)
    [line] = [m for m in caplog.messages if m.startswith("nginx reloaded")]
    assert line.endswith("): a -> v1 x2 + canary v2 10%; b -> 503"), line
    caplog.clear()
    serve(r)
    [line] = [m for m in caplog.messages if m.startswith("nginx reloaded")]
    assert line.endswith("): no services"), line


def test_each_reload_is_timed_for_the_metrics(tmp_path):
    sample = lambda: REGISTRY.get_sample_value("proxy_reloader_apply_seconds_count", {"way": "reload"}) or 0  # noqa: E731
    before = sample()
    serve(runner(tmp_path, mode=RELOAD), route("a", 1))
    assert sample() == before + 1


def test_each_push_logs_whether_it_was_whole_and_what_it_carried(tmp_path, caplog):
    r = runner(tmp_path)
    r.certificates = Book({"a.test": pem("a1")})
    caplog.set_level(logging.INFO, "proxy_reloader.runner")
    assert r._push_table([route("a", 1), route("b", 2)])
    assert any(m.startswith("pushed generation ") and "(full)" in m for m in caplog.messages), caplog.messages
    caplog.clear()
    assert r._push_table([route("a", 1), route("b", 3)])
    [line] = [m for m in caplog.messages if m.startswith("pushed generation ")]
    assert "(1 service(s)): b -> v1 x1" in line, line
    caplog.clear()
    r.certificates.certs = {"a.test": pem("a2")}
    assert r._push_table([route("a", 1), route("b", 4)])
    [line] = [m for m in caplog.messages if m.startswith("pushed generation ")]
    assert "(1 service(s), 1 certificate(s))" in line, line


def test_a_restart_is_logged_only_when_nginx_restarted(tmp_path, caplog):
    table = FakeNginxTable()
    r = runner(tmp_path, push=table)
    caplog.set_level(logging.INFO, "proxy_reloader.runner")
    r._push_table([route("a", 1)])
    table.down = True
    r._push_table([route("a", 2)])                       # fails: pushed whole once nginx answers
    r.recheck.cancel()
    table.down = False
    r._push_table([route("a", 2)])
    assert table.bodies[-1]["full"] is True
    assert not [m for m in caplog.messages if "restarted" in m], "neither the first push nor a failed one is a restart"
    table.boot = "b2"
    r._push_table([route("a", 2)])
    assert [m for m in caplog.messages if "nginx restarted (boot b2" in m]


# --- certificates and ACME answers --------------------------------------------------------------

def test_after_an_nginx_restart_every_certificate_and_acme_answer_is_pushed_again(tmp_path):
    table = FakeNginxTable()
    r = runner(tmp_path, push=table)
    r.certificates = Book({"a.test": pem("a1"), "b.test": pem("b1")}, {TOKEN: TOKEN + ".k"})
    r._push_table([route("a", 1)])
    table.boot, table.generation = "b2", 1                # a new nginx, with only the file's table
    r._push_table([route("a", 1)])
    body = table.bodies[-1]
    assert body["full"] is True
    assert body["certificates"] == {"a.test": pem("a1"), "b.test": pem("b1")}
    assert body["challenges"] == {TOKEN: TOKEN + ".k"}


def test_status_in_dynamic_mode_shows_the_tls_listener_the_certificates_and_acme(tmp_path):
    acme = Issuer()
    r = runner(tmp_path, tls_listen="127.0.0.1:8443", acme=acme)
    r.certificates = Book({"a.test": pem("a1")})
    status = r.status()
    assert status["tls_listen"] == "127.0.0.1:8443"
    assert status["certificates"] == ["a.test"] and status["certificate_errors"] == {}
    assert status["acme"] == {"orders": 0}
    assert "acme" not in runner(tmp_path).status(), "no ACME issuer, no acme field"


def test_the_local_ca_and_acme_are_told_what_is_routed_after_each_push(tmp_path):
    ca, acme = Issuer(), Issuer()
    r = runner(tmp_path, issuer=ca, acme=acme)
    r.certificates = Book({"a.test": pem("a1")})
    serve(r, hosted("a", "a.test", 1), hosted("b", "b.test,*.b.test", 2))
    wanted = (["*.b.test", "a.test", "b.test"], {"a.test": "served a.test"})
    assert ca.calls == [wanted] and acme.calls == [wanted]


def test_a_failed_push_tells_neither_issuer_anything(tmp_path):
    ca, acme = Issuer(), Issuer()
    table = FakeNginxTable()
    table.down = True
    r = runner(tmp_path, push=table, issuer=ca, acme=acme)
    serve(r, hosted("a", "a.test", 1))
    r.recheck.cancel()
    assert ca.calls == [] and acme.calls == []


@pytest.mark.parametrize("failure", [requests.ConnectionError("Consul unreachable"), RuntimeError("a CA bug")])
def test_a_local_ca_that_fails_does_not_stop_the_proxy(tmp_path, failure):
    ca = Issuer()
    ca.fail = failure
    r = runner(tmp_path, issuer=ca)
    serve(r, hosted("a", "a.test", 1))
    assert r.status()["services"]["a"]["stable"]["servers"] == ["127.0.0.1:1"] and r.last_error is None
    serve(r, hosted("a", "a.test", 2))
    assert len(ca.calls) == 2


def test_idle_the_local_ca_looks_for_renewals_every_issue_every(tmp_path):
    ca = Issuer()
    r = runner(tmp_path, issuer=ca, issue_every=3600.0)
    serve(r, hosted("a", "a.test", 1))
    r._idle()
    assert len(ca.calls) == 1, "not due yet"
    r.options.issue_every = 0.0
    r._idle()
    assert ca.calls[-1][0] == ["a.test"] and len(ca.calls) == 2, "due: the routed hosts, with no catalog change"
    runner(tmp_path, mode=RELOAD, issuer=ca, issue_every=0.0)._idle()
    assert len(ca.calls) == 2, "reload mode has no certificates to renew"


# --- --once ---------------------------------------------------------------------------------------

def test_once_writes_and_pushes_the_certificates_and_acme_answers_consul_holds(tmp_path):
    nginx = FakeNginx(tmp_path)
    settings = Settings(str(tmp_path), "127.0.0.1:8000", mode=DYNAMIC)
    book = Book({"a.test": pem("a1")}, {TOKEN: TOKEN + ".k"})
    stores = Stores({"a": [reg("a", 1)]})
    stores.certificates = SimpleNamespace(items=lambda: {"certificates/a.test": "from Consul"})
    push = Push(generation=0)
    render_once(stores, nginx, settings, push, certificates=book)
    assert book.taken == [{"certificates/a.test": "from Consul"}] and book.scans == 1
    table = json.loads((tmp_path / "backends.json").read_text())
    assert table["certificates"] == {"a.test": pem("a1")} and table["challenges"] == {TOKEN: TOKEN + ".k"}
    [body] = push.bodies
    assert body["certificates"] == table["certificates"] and body["challenges"] == table["challenges"]
    assert body["generation"] == table["generation"], "nginx at generation 0: the clock's"


def test_once_with_consul_unreachable_for_certificates_still_writes_the_table(tmp_path):
    def unreachable():
        raise requests.ConnectionError("Consul unreachable")
    stores = Stores({"a": [reg("a", 1)]})
    stores.certificates = SimpleNamespace(items=unreachable)
    render_once(stores, FakeNginx(tmp_path), Settings(str(tmp_path), "127.0.0.1:8000", mode=DYNAMIC),
                certificates=Book({"a.test": pem("a1")}))
    table = json.loads((tmp_path / "backends.json").read_text())
    assert set(table["services"]) == {"a"} and set(table["certificates"]) == {"a.test"}
