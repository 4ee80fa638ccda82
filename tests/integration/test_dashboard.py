"""The dashboard process against the real Consul (ACLs on, the stack's own tokens): login,
what each token sees and may do, forged requests, expired sessions, Consul and Prometheus out
of reach, and the live stream. The pages in a real browser: tests/e2e/test_progressive.py."""
from __future__ import annotations

import html
import json
import threading
import time

import pytest
import requests

from catalog.model import MANUAL, RoutingPolicy
from testbed.dashboard import DashboardServer
from testbed.processes import ConsulServer

READ_ONLY, ACTIONS, SHORT, NO_PROMETHEUS = 18060, 18061, 18062, 18063


def token(consul_server, part):
    return open(consul_server.token_file(part)).read().strip()


@pytest.fixture(scope="module")
def dashboards(consul_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("dashboard")
    servers = {
        "read_only": DashboardServer(base, consul_server.address, READ_ONLY, prometheus="http://127.0.0.1:9",
                                     name="read-only"),
        "actions": DashboardServer(base, consul_server.address, ACTIONS, allow_actions=True, name="actions"),
        "short": DashboardServer(base, consul_server.address, SHORT, session_minutes=0.03, name="short"),
    }
    for s in servers.values():
        s.start()
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture
def service(stores, unique):
    """A service in manual mode with a canary, as gatekeeper leaves it after a new version passed."""
    stores.policies.put(RoutingPolicy(unique, stable="v1", canary="v2", weight=0, mode=MANUAL), cas=0)
    stores.history.add(unique, "canary", version="v2", by="gatekeeper")
    yield unique
    stores.forget_service(unique)


def test_without_a_session_every_page_leads_to_the_login_and_says_nothing(dashboards, service):
    d = dashboards["read_only"]
    for path in ("/", f"/services/{service}"):
        r = requests.get(d.url + path, timeout=5)
        assert r.url.endswith("/login") and "Consul token" in r.text and service not in r.text
    assert requests.get(d.url + "/events", timeout=5).status_code == 401
    assert requests.get(d.url + "/?fragment=1", timeout=5).status_code == 401
    assert requests.get(d.url + "/healthz", timeout=5).text == "ok\n"


def test_pages_carry_a_strict_content_security_policy_and_no_inline_script(dashboards, consul_server, service):
    d = dashboards["read_only"]
    http = d.login(token(consul_server, "viewer"))
    r = http.get(d.url + f"/services/{service}", timeout=10)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"
    assert "<script>" not in r.text and 'src="/static/dashboard.js"' in r.text and " style=" not in r.text
    cookie = next(c for c in http.cookies)
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Strict"


def test_a_bad_token_gets_a_clear_message_and_no_session(dashboards):
    d = dashboards["read_only"]
    r = requests.post(d.url + "/login", data={"token": "00000000-1111-2222-3333-444444444444"}, timeout=10)
    assert r.status_code == 403 and "Consul does not know this token" in r.text and "Traceback" not in r.text
    assert "proxystack_session" not in r.cookies
    r = requests.post(d.url + "/login", data={"token": "  "}, timeout=10)
    assert r.status_code == 400 and "Paste a Consul ACL token" in r.text
    # Consul's anonymous token, which Consul knows and anyone may type, is no login either
    r = requests.post(d.url + "/login", data={"token": "anonymous"}, timeout=10, allow_redirects=False)
    assert r.status_code == 403 and "anonymous token" in r.text and "proxystack_session" not in r.cookies


def test_the_viewer_sees_the_services_read_only_and_cannot_act(dashboards, consul_server, stores, service):
    d = dashboards["actions"]            # actions allowed on this dashboard, but not for this token
    http = d.login(token(consul_server, "viewer"))
    overview = http.get(d.url + "/", timeout=10).text
    assert f'data-service="{service}"' in overview and "(read-only)" in overview
    page = http.get(d.url + f"/services/{service}", timeout=10).text
    assert "canary <strong class=\"canary\">v2</strong>" in page
    assert 'name="action"' not in page and "Promote" not in page
    r = http.post(d.url + f"/services/{service}/actions", data={"action": "promote", "csrf": d.csrf(http)},
                  timeout=10)
    assert r.status_code == 403 and "may not change routing policies" in r.text
    assert stores.policies.get(service)[1].canary == "v2"


def test_the_operator_acts_with_the_csrf_token_and_a_forged_request_changes_nothing(dashboards, consul_server,
                                                                                     stores, service):
    d = dashboards["actions"]
    http = d.login(token(consul_server, "operator"))
    page = http.get(d.url + f"/services/{service}", timeout=10).text
    assert 'value="promote"' in page and 'data-confirm=' in page
    url = d.url + f"/services/{service}/actions"
    # no CSRF token, a wrong one, the right one from another site: all refused, nothing changed
    for data, headers in (({"action": "weight", "weight": "50"}, {}),
                          ({"action": "weight", "weight": "50", "csrf": "guess"}, {}),
                          ({"action": "weight", "weight": "50", "csrf": d.csrf(http)}, {"Origin": "http://evil.test"})):
        r = http.post(url, data=data, headers=headers, timeout=10)
        assert r.status_code == 403 and "refused" in r.text, r.text[:500]
    assert stores.policies.get(service)[1].weight == 0
    r = http.post(url, data={"action": "weight", "weight": "30", "csrf": d.csrf(http)}, timeout=10)
    assert r.ok and "canary v2 takes 30% of traffic" in r.text
    assert stores.policies.get(service)[1].weight == 30
    last = stores.history.of(service)[-1]
    assert last["event"] == "weight" and last["weight"] == 30 and last["by"] == "dashboard (proxystack operator)"
    r = http.post(url, data={"action": "weight", "weight": "300", "csrf": d.csrf(http)}, timeout=10)
    assert r.ok and "weight=300 is invalid" in r.text and stores.policies.get(service)[1].weight == 30
    r = http.post(url, data={"action": "abort", "csrf": d.csrf(http)}, timeout=10)
    assert r.ok and "canary v2 aborted" in r.text and stores.policies.get(service)[1].canary == ""


def test_a_read_only_dashboard_offers_no_action_even_to_the_operator(dashboards, consul_server, stores, service):
    d = dashboards["read_only"]
    http = d.login(token(consul_server, "operator"))
    assert 'name="action"' not in http.get(d.url + f"/services/{service}", timeout=10).text
    r = http.post(d.url + f"/services/{service}/actions", data={"action": "promote", "csrf": d.csrf(http)}, timeout=10)
    assert r.status_code == 403 and "--allow-actions" in r.text and stores.policies.get(service)[1].canary == "v2"


def test_an_idle_session_expires_with_a_message_and_logging_out_ends_it(dashboards, consul_server):
    d = dashboards["short"]              # 0.03 minutes: under two seconds without a request
    http = d.login(token(consul_server, "viewer"))
    assert http.get(d.url + "/", timeout=10).url.rstrip("/") == d.url
    time.sleep(2.5)
    r = http.get(d.url + "/", timeout=10)
    assert r.url.endswith("/login?expired=1") and "Your session expired" in r.text
    http = d.login(token(consul_server, "viewer"))
    http.post(d.url + "/logout", data={"csrf": d.csrf(http)}, timeout=10)
    assert http.get(d.url + "/", timeout=10).url.endswith("/login")


def test_an_unknown_service_and_prometheus_out_of_reach_are_said_in_words(dashboards, consul_server, service):
    d = dashboards["read_only"]          # its --prometheus points at a closed port
    http = d.login(token(consul_server, "viewer"))
    r = http.get(d.url + "/services/no-such-service", timeout=10)
    assert r.status_code == 404 and "unknown service 'no-such-service'" in html.unescape(r.text)
    assert "Traceback" not in r.text
    overview = http.get(d.url + "/", timeout=10).text
    assert "traffic figures unavailable: Prometheus at http://127.0.0.1:9" in overview
    assert f'data-service="{service}"' in overview


def test_consul_down_is_a_message_on_the_page_and_the_page_comes_back_with_it(tmp_path):
    consul = ConsulServer(tmp_path, http_port=18064, port_base=18864).start()
    d = DashboardServer(tmp_path, consul.address, 18065).start()
    try:
        http = d.login(open(consul.token_file("viewer")).read().strip())
        consul.stop()
        r = http.get(d.url + "/", timeout=20)
        assert r.status_code == 503 and f"Consul at {consul.address} does not answer" in r.text
        assert "Traceback" not in r.text
        r = requests.post(d.url + "/login", data={"token": "x"}, timeout=20)
        assert r.status_code == 503 and "does not answer" in r.text
        consul.start()
        assert http.get(d.url + "/", timeout=20).status_code == 200
    finally:
        d.stop()
        consul.stop()


def test_the_live_stream_says_change_when_consul_changes(dashboards, consul_server, stores, service):
    d = dashboards["read_only"]
    http = d.login(token(consul_server, "viewer"))
    events, ready = [], threading.Event()

    def listen():
        with http.get(d.url + "/events", stream=True, timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            ready.set()
            event = ""
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    events.append((event, json.loads(line[6:])))
                    if event == "change" and written:
                        return

    written = []
    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    time.sleep(1.0)                      # the stream's blocking queries are in place
    # as it connected, one change: whatever was written since the page was read is fetched
    assert [e for e, _ in events if e == "change"] == ["change"], events
    written.append(time.monotonic())
    stores.history.add(service, "weight", version="v2", weight=10, by="test")
    t.join(15)
    assert [e for e, _ in events if e == "change"] == ["change", "change"], events
    assert time.monotonic() - written[0] < 10


def test_a_page_left_open_does_not_keep_its_session_alive(dashboards, consul_server):
    d = dashboards["short"]
    http = d.login(token(consul_server, "viewer"))
    codes, deadline = [], time.monotonic() + 2.5     # twice the 1.8 s a session may stay unused
    while time.monotonic() < deadline:               # the page's own live refreshes, nobody at it
        codes.append(http.get(d.url + "/?fragment=1", timeout=10).status_code)
        time.sleep(0.2)
    assert codes[0] == 200 and codes[-1] == 401, codes
    assert "Your session expired" in http.get(d.url + "/", timeout=10).text


def test_a_damaged_history_entry_leaves_the_page_readable(dashboards, consul_server, stores, service):
    """History is JSON the operator's token may write; a hand-made entry must not break the page."""
    from catalog.kv_layout import HISTORY
    for i, value in enumerate(['"just a string"', '{"time": "yesterday", "event": "analysis", "canary": 7}',
                               '{"time": NaN, "event": "analysis started", "version": "v2", "weight": "x", '
                               '"settings": {"interval": "4"}}', '{"event": "analysis", "version": "v2", '
                               '"weight": 10, "result": "<b>fail</b>", "canary": {"requests": "many"}}',
                               '{"time": 1e300, "event": "promoted", "version": "v2", "by": "hand"}']):
        stores.consul.kv_put(f"{HISTORY}{service}/{time.time_ns() + i:020d}", value)
    d = dashboards["read_only"]
    http = d.login(token(consul_server, "viewer"))
    r = http.get(d.url + f"/services/{service}", timeout=10)
    assert r.status_code == 200 and "rollout-chart" in r.text and "<b>fail</b>" not in r.text
    assert "&lt;b&gt;fail&lt;/b&gt;" in r.text
