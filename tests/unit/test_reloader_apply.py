"""proxy-reloader's apply step in reload mode, with a fake nginx: every change is a validated new
config and a reload; a config nginx refuses keeps the last good one and leaves out only the
service nginx refuses on its own; what the status endpoint and the Consul check say; the
one-shot render (--once). (Real-nginx twin: tests/e2e/test_proxy_reloader.py.)"""
import time
from types import SimpleNamespace

import pytest
import requests

from catalog.model import Instance, RegisteredInstance, RoutingPolicy
from catalog.routing import Pool, Route
from proxy_reloader.nginx import NginxError, ReloadError
from proxy_reloader.render import DYNAMIC, Settings, config_version
from proxy_reloader.runner import Runner, RunnerOptions, isolate, render_once
from tests.support.fakes import FakeNginx


def reg(service, port, version="v1", path=None):
    inst = Instance(id=f"h:{service}{port}:8080", service=service, address="127.0.0.1", port=port, version=version,
                    container_id=f"c{port}", container_name=f"{service}{port}", image=f"{service}:{version}",
                    registered_by="r", proxy_path=path or f"/{service}/")
    return RegisteredInstance(inst, {inst.gate_check_id: "passing"})


def serves(conf, port):
    """The config sends traffic to 127.0.0.1:port."""
    return f"server 127.0.0.1:{port} max_fails=0;" in conf


BAD_PORT = 6666          # nginx refuses any config with this server ("host not found", say)
REFUSE_BAD = [((f"127.0.0.1:{BAD_PORT} ",), "host not found in upstream")]


class Reporter:
    """The Consul check: (ok, message) per report."""

    def __init__(self, fail=None):
        self.reports, self.fail = [], fail

    def __call__(self, ok, message):
        self.reports.append((ok, message))
        if self.fail:
            raise self.fail


def make(tmp_path, refuse=(), reporter=None, **options):
    nginx = FakeNginx(tmp_path, refuse)
    r = Runner(SimpleNamespace(disrupted_at=0.0), nginx, RunnerOptions(**options), reporter=reporter)
    return r, nginx


def step(r, snapshot):
    """What the loop does for one batch of changes from the mirror."""
    r.update(snapshot)
    r._apply()


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.glob(".nginx.conf.*"))


# --- every change a validated config and a reload ------------------------------------------

def test_every_change_is_a_new_validated_config_and_a_reload(tmp_path):
    r, nginx = make(tmp_path, listen="127.0.0.1:8123", workers="3", read_timeout="7s")
    step(r, {"a": ([reg("a", 1)], None)})
    [first] = nginx.installed
    assert serves(first, 1) and "location /a/ {" in first
    assert "listen 127.0.0.1:8123 default_server;" in first and "worker_processes 3;" in first
    assert "proxy_read_timeout 7s;" in first
    step(r, {"a": ([reg("a", 2)], None)})
    assert len(nginx.installed) == 2 and nginx.validated[-1] == nginx.installed[-1]
    assert serves(nginx.installed[-1], 2) and not serves(nginx.installed[-1], 1)
    status = r.status()
    assert (status["reloads"], status["renders"], status["last_error"]) == (2, 2, None)
    assert status["services"]["a"]["stable"]["servers"] == ["127.0.0.1:2"]
    assert leftovers(tmp_path) == [], "no candidate file is left beside nginx.conf"


def test_apply_says_whether_nginx_was_reloaded_and_an_unchanged_config_is_not_reloaded(tmp_path):
    r, nginx = make(tmp_path)
    r.update({"a": ([reg("a", 1)], None)})
    assert r.apply() is True
    r.update({"a": ([reg("a", 1)], None)})          # the mirror saw a change that does not matter
    assert r.apply() is False
    assert len(nginx.validated) == 1 and len(nginx.installed) == 1
    assert (r.status()["reloads"], r.status()["renders"]) == (1, 2)


def test_last_reload_is_when_nginx_was_last_reloaded(tmp_path):
    r, nginx = make(tmp_path)
    assert r.status()["last_reload"] is None
    before = time.time()
    step(r, {"a": ([reg("a", 1)], None)})
    assert before <= r.status()["last_reload"] <= time.time()


def test_a_service_that_goes_away_leaves_the_config(tmp_path):
    r, nginx = make(tmp_path)
    step(r, {"a": ([reg("a", 1)], None), "b": ([reg("b", 2)], None)})
    step(r, {"b": (None, None)})
    assert serves(nginx.conf, 1) and not serves(nginx.conf, 2)
    assert set(r.status()["services"]) == {"a"}


def test_the_routing_policy_decides_which_version_serves(tmp_path):
    r, nginx = make(tmp_path)
    step(r, {"a": ([reg("a", 1, "v1"), reg("a", 2, "v2")], '{"service": "a", "stable": "v2"}')})
    assert serves(nginx.conf, 2) and not serves(nginx.conf, 1)


def test_a_service_with_bad_data_is_left_out_and_named_until_its_data_is_fixed(tmp_path):
    reporter = Reporter()
    r, nginx = make(tmp_path, reporter=reporter)
    step(r, {"a": ([reg("a", 1)], None), "b": ([reg("b", 2)], "{not json")})
    assert serves(nginx.conf, 1) and not serves(nginx.conf, 2)
    errors = r.status()["service_errors"]
    assert set(errors) == {"b"} and errors["b"].startswith("gatekeeper/policies/b: ")
    assert reporter.reports[-1] == (False, f"b: {errors['b']}")
    step(r, {"b": ([reg("b", 2)], '{"service": "b", "stable": "v1"}')})
    assert serves(nginx.conf, 2) and r.status()["service_errors"] == {}
    assert r.status()["last_error"] is None and reporter.reports[-1][0] is True


def test_a_service_with_bad_data_keeps_its_last_good_route(tmp_path):
    r, nginx = make(tmp_path)
    step(r, {"b": ([reg("b", 2)], None)})
    step(r, {"b": ([reg("b", 3)], "{not json")})
    assert serves(nginx.conf, 2) and not serves(nginx.conf, 3)
    assert r.status()["services"]["b"]["stable"]["servers"] == ["127.0.0.1:2"]
    assert "b" in r.status()["service_errors"]


def test_two_services_at_one_path_the_first_by_name_keeps_it(tmp_path):
    r, nginx = make(tmp_path)
    step(r, {"b": ([reg("b", 2, path="/x/")], None), "a": ([reg("a", 1, path="/x/")], None)})
    assert serves(nginx.conf, 1) and not serves(nginx.conf, 2)
    assert r.status()["service_errors"] == {"b": "path /x/ is already routed to a"}


# --- nginx refuses a config --------------------------------------------------------------

def test_a_service_nginx_refuses_is_left_out_and_every_other_change_applies(tmp_path):
    reporter = Reporter()
    r, nginx = make(tmp_path, REFUSE_BAD, reporter=reporter)
    step(r, {"a": ([reg("a", 1)], None)})
    step(r, {"a": ([reg("a", 2)], None), "bad": ([reg("bad", BAD_PORT)], None)})
    assert serves(nginx.conf, 2) and not serves(nginx.conf, BAD_PORT)
    status = r.status()
    assert status["service_errors"] == {"bad": "nginx refused its config: host not found in upstream"}
    assert status["last_error"] == "bad: nginx refused its config: host not found in upstream"
    assert set(status["services"]) == {"a"} and status["reloads"] == 2
    assert reporter.reports[-1] == (False, status["last_error"])
    assert leftovers(tmp_path) == [], "the candidates tried one service at a time are removed"


def test_a_refused_new_service_alone_does_not_reload_nginx(tmp_path):
    r, nginx = make(tmp_path, REFUSE_BAD)
    step(r, {"a": ([reg("a", 1)], None)})
    good = nginx.conf
    step(r, {"bad": ([reg("bad", BAD_PORT)], None)})
    assert nginx.conf == good and len(nginx.installed) == 1 and r.status()["reloads"] == 1
    assert set(r.status()["service_errors"]) == {"bad"}


def test_every_problem_is_in_the_check_one_after_the_other(tmp_path):
    reporter = Reporter()
    r, nginx = make(tmp_path, REFUSE_BAD, reporter=reporter)
    step(r, {"a": ([reg("a", 1)], "{bad"), "bad": ([reg("bad", BAD_PORT)], None), "c": ([reg("c", 3)], None)})
    errors = r.status()["service_errors"]
    assert reporter.reports[-1] == (False, f"a: {errors['a']}; bad: {errors['bad']}")


def test_a_refused_service_keeps_its_last_good_route(tmp_path):
    r, nginx = make(tmp_path, REFUSE_BAD)
    step(r, {"a": ([reg("a", 1)], None), "b": ([reg("b", 5)], None)})
    step(r, {"a": ([reg("a", 2)], None), "b": ([reg("b", BAD_PORT)], None)})
    assert serves(nginx.conf, 2) and serves(nginx.conf, 5) and not serves(nginx.conf, BAD_PORT)
    assert r.status()["services"]["b"]["stable"]["servers"] == ["127.0.0.1:5"]
    assert set(r.status()["service_errors"]) == {"b"}
    step(r, {"b": ([reg("b", 7)], None)})                      # fixed: its new route, and no error
    assert serves(nginx.conf, 7) and not serves(nginx.conf, 5) and r.status()["service_errors"] == {}


def test_when_nginx_refuses_no_service_alone_nothing_changes_and_nginx_is_named(tmp_path):
    reporter = Reporter()
    both = [(("location /a/ {", "location /b/ {"), "duplicate upstream")]     # only together
    r, nginx = make(tmp_path, both, reporter=reporter)
    step(r, {"a": ([reg("a", 1)], None)})
    good = nginx.conf
    step(r, {"b": ([reg("b", 2)], None)})
    assert nginx.conf == good and len(nginx.installed) == 1
    status = r.status()
    assert status["last_error"] == "duplicate upstream" and set(status["services"]) == {"a"}
    assert reporter.reports[-1] == (False, "duplicate upstream")
    assert leftovers(tmp_path) == []


def test_when_the_rest_is_still_refused_after_isolating_nothing_changes(tmp_path):
    refuse = [(("location /a/ {", "location /b/ {"), "duplicate upstream")] + REFUSE_BAD
    r, nginx = make(tmp_path, refuse)
    step(r, {"c": ([reg("c", 3)], None)})
    good = nginx.conf
    step(r, {"a": ([reg("a", 1)], None), "b": ([reg("b", 2)], None), "bad": ([reg("bad", BAD_PORT)], None)})
    assert nginx.conf == good and r.status()["last_error"] == "duplicate upstream"
    assert set(r.status()["services"]) == {"c"}


def test_a_reload_that_does_not_take_keeps_what_nginx_served(tmp_path):
    reporter = Reporter()
    r, nginx = make(tmp_path, reporter=reporter)
    step(r, {"a": ([reg("a", 1)], None)})
    nginx.reload_error = ReloadError("nginx did not take the new config within 5 s")
    step(r, {"a": ([reg("a", 2)], None)})
    status = r.status()
    assert status["last_error"] == "nginx did not take the new config within 5 s"
    assert status["services"]["a"]["stable"]["servers"] == ["127.0.0.1:1"] and status["reloads"] == 1
    assert reporter.reports[-1] == (False, "nginx did not take the new config within 5 s")
    nginx.reload_error = None
    step(r, {"a": ([reg("a", 3)], None)})
    assert r.status()["last_error"] is None and serves(nginx.conf, 3)


def test_isolate_names_each_refused_service_and_keeps_the_rest(tmp_path):
    # nginx judges each service in the config it would really run: here it refuses the bad
    # server only with the 7 s read timeout this proxy is configured with.
    nginx = FakeNginx(tmp_path, [(("proxy_read_timeout 7s;", f"127.0.0.1:{BAD_PORT} "), "host not found in upstream")])
    settings = Settings(str(tmp_path), "127.0.0.1:8000", read_timeout="7s")
    a = Route("a", "/a/", "", Pool("v1", (("127.0.0.1", 1),)))
    bad = Route("bad", "/bad/", "", Pool("v1", (("127.0.0.1", BAD_PORT),)))
    errors = {"x": "earlier"}
    assert isolate(nginx, settings, [a, bad], errors, NginxError("all")) == [a]
    assert errors == {"x": "earlier", "bad": "nginx refused its config: host not found in upstream"}
    with pytest.raises(NginxError, match="^all$"):
        isolate(nginx, settings, [a], {}, NginxError("all"))
    assert leftovers(tmp_path) == []


# --- what the check and the status endpoint say ------------------------------------------

def test_the_consul_check_passes_with_the_config_version_and_service_count(tmp_path):
    reporter = Reporter()
    r, nginx = make(tmp_path, reporter=reporter)
    step(r, {"a": ([reg("a", 1)], None), "b": ([reg("b", 2)], None)})
    assert reporter.reports == [(True, f"config {config_version(nginx.conf)}: 2 service(s)")]


def test_a_consul_check_that_cannot_be_written_does_not_stop_the_proxy(tmp_path):
    reporter = Reporter(fail=requests.ConnectionError("consul down"))
    r, nginx = make(tmp_path, reporter=reporter)
    step(r, {"a": ([reg("a", 1)], None)})
    step(r, {"a": ([reg("a", 2)], None)})
    assert len(reporter.reports) == 2 and serves(nginx.conf, 2)


def test_what_nginx_serves_is_published_after_each_apply(tmp_path):
    r, nginx = make(tmp_path)
    published = []
    r.served = SimpleNamespace(update=lambda routes: published.append(sorted(x.service for x in routes)))
    step(r, {"a": ([reg("a", 1)], None), "b": ([reg("b", 2)], None)})
    step(r, {"b": (None, None)})
    assert published == [["a", "b"], ["a"]]


def test_status_in_reload_mode(tmp_path):
    r, nginx = make(tmp_path)
    empty = r.status()
    assert empty == {"mode": "reload", "config_version": "", "served_version": "", "reloads": 0, "renders": 0,
                     "last_reload": None, "last_error": None, "service_errors": {}, "file_errors": {},
                     "services": {}}
    step(r, {"a": ([reg("a", 1)], None), "b": ([reg("b", 2)], "{bad")})
    status = r.status()
    assert status["config_version"] == config_version(nginx.conf) != ""
    assert status["served_version"] == nginx.served_version()
    nginx.served_version = lambda: "0123456789abcdef"                  # the workers still run an older one
    assert r.status()["served_version"] == "0123456789abcdef"
    assert status["services"] == {"a": r.routes[0].to_dict()}
    assert set(status["service_errors"]) == {"b"}
    assert not {"pushes", "generation", "push_error"} & set(status), "push fields only in dynamic mode"


# --- --once --------------------------------------------------------------------------------

class Stores:
    def __init__(self, instances, policies=None):
        self.instances = SimpleNamespace(all=lambda: instances)
        self.policies = SimpleNamespace(get=lambda s: (1, (policies or {}).get(s)))
        self.certificates = SimpleNamespace(items=lambda: {})


class Push:
    def __init__(self, generation=0):
        self.generation, self.bodies = generation, []

    def state(self):
        return {"generation": self.generation, "boot": "b1"}

    def push(self, body):
        import json
        self.bodies.append(json.loads(body))
        return self.state()


def test_once_writes_the_config_and_says_whether_it_changed(tmp_path):
    nginx = FakeNginx(tmp_path)
    settings = Settings(str(tmp_path), "127.0.0.1:8000", workers="3", read_timeout="7s")
    stores = Stores({"a": [reg("a", 1), reg("a", 2, "v2")], "b": [reg("b", 3)]},
                    {"a": RoutingPolicy("a", stable="v2")})
    assert render_once(stores, nginx, settings) is True
    assert serves(nginx.conf, 2) and serves(nginx.conf, 3) and not serves(nginx.conf, 1)
    assert "listen 127.0.0.1:8000 default_server;" in nginx.conf and "worker_processes 3;" in nginx.conf
    assert "proxy_read_timeout 7s;" in nginx.conf
    assert render_once(stores, nginx, settings) is False
    assert not (tmp_path / "backends.json").exists(), "reload mode has no table"


def test_once_leaves_out_a_service_nginx_refuses(tmp_path):
    nginx = FakeNginx(tmp_path, REFUSE_BAD)
    stores = Stores({"a": [reg("a", 1)], "bad": [reg("bad", BAD_PORT)]})
    assert render_once(stores, nginx, Settings(str(tmp_path), "127.0.0.1:8000", read_timeout="7s")) is True
    assert serves(nginx.conf, 1) and not serves(nginx.conf, BAD_PORT) and "proxy_read_timeout 7s;" in nginx.conf


def test_once_fails_when_nginx_refuses_no_service_alone(tmp_path):
    nginx = FakeNginx(tmp_path, [(("location /a/ {", "location /b/ {"), "duplicate upstream")])
    with pytest.raises(NginxError, match="duplicate upstream"):
        render_once(Stores({"a": [reg("a", 1)], "b": [reg("b", 2)]}), nginx, Settings(str(tmp_path), "127.0.0.1:8000"))
    assert nginx.conf is None


def test_once_in_dynamic_mode_writes_the_table_and_pushes_it_whole_to_a_running_nginx(tmp_path):
    import json
    nginx = FakeNginx(tmp_path)
    settings = Settings(str(tmp_path), "127.0.0.1:8000", mode=DYNAMIC, modules="/opt/mods")
    push = Push(generation=10 ** 15)                                      # a generation ahead of the clock
    before = int(time.time() * 1000)
    stores = Stores({"a": [reg("a", 1)], "b": [reg("b", 2)]})
    assert render_once(stores, nginx, settings, push) is True
    assert "load_module /opt/mods/ngx_http_lua_module.so;" in nginx.conf
    table = json.loads((tmp_path / "backends.json").read_text())
    assert table["full"] is True and table["services"]["b"]["stable"]["servers"] == [["127.0.0.1", 2, "v1"]]
    assert set(table["services"]) == {"a", "b"}
    assert before <= table["generation"] <= time.time() * 1000
    [body] = push.bodies
    assert body["full"] is True and body["services"] == table["services"]
    assert body["generation"] == 10 ** 15 + 1, "never a generation the workers already have"


def test_once_pushes_at_the_clocks_generation_when_nginx_is_behind(tmp_path):
    nginx = FakeNginx(tmp_path)
    settings = Settings(str(tmp_path), "127.0.0.1:8000", mode=DYNAMIC)
    push = Push(generation=5)
    before = int(time.time() * 1000)
    render_once(Stores({"a": [reg("a", 1)]}), nginx, settings, push)
    assert before <= push.bodies[0]["generation"] <= time.time() * 1000


def test_once_does_not_push_when_nginx_is_not_running_or_there_is_no_endpoint(tmp_path):
    nginx = FakeNginx(tmp_path)
    nginx.pid = None
    settings = Settings(str(tmp_path), "127.0.0.1:8000", mode=DYNAMIC)
    push = Push()
    render_once(Stores({"a": [reg("a", 1)]}), nginx, settings, push)
    assert push.bodies == [] and (tmp_path / "backends.json").exists()
    nginx.pid = 4242
    render_once(Stores({"a": [reg("a", 2)]}), nginx, settings, None)      # no push endpoint: the file only
