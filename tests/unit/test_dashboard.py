"""The dashboard's parts that decide what a page says: the rollout read from a history and its
chart, the state badge, login sessions. The pages themselves against real Consul:
tests/integration/test_dashboard.py; in a browser: tests/e2e/test_progressive.py."""
from __future__ import annotations

import re

from dashboard.chart import last_rollout, svg
from dashboard.sessions import EXPIRED, UNKNOWN, Sessions, same_secret
from dashboard.views import badge, per_host

SETTINGS = {"interval": 4, "step": 10, "max_weight": 100, "success_rate": 99.0, "p99_ms": 500.0,
            "min_requests": 40, "threshold": 3}


def m(requests, rate, p99):
    return {"requests": requests, "success_rate": rate, "p99_ms": p99}


def rolled_back_history():
    """As gatekeeper writes it: the deciding step's entry comes just after the abort it caused."""
    return [
        {"time": 90.0, "event": "promoted", "version": "v1", "by": "gatekeeper (auto)"},
        {"time": 100.0, "event": "analysis started", "version": "v2", "weight": 10, "settings": SETTINGS},
        {"time": 104.0, "event": "analysis", "version": "v2", "weight": 10, "result": "fail", "reason": "1 of 3",
         "canary": m(790, 94.8, 7.1), "stable": m(7125, 100.0, 5.0)},
        {"time": 108.0, "event": "analysis", "version": "v2", "weight": 10, "result": "fail", "reason": "2 of 3",
         "canary": m(1781, 93.7, 5.0), "stable": m(16025, 100.0, 5.0)},
        {"time": 112.0, "event": "aborted", "version": "v2", "by": "gatekeeper (analysis)", "reason": "rolled back at 10 %"},
        {"time": 112.1, "event": "analysis", "version": "v2", "weight": 10, "result": "fail",
         "reason": "rolled back at 10 %", "canary": m(1298, 95.0, 5.0), "stable": m(12309, 100.0, 5.0)},
        {"time": 113.0, "event": "canary", "version": "v3", "by": "operator"},
    ]


def test_a_rolled_back_rollout_keeps_every_step_the_deciding_one_included():
    r = last_rollout(rolled_back_history())
    assert (r.version, r.outcome, r.outcome_by) == ("v2", "rolled back", "gatekeeper (analysis)")
    assert [(round(s.t, 1), s.result) for s in r.steps] == [(4.0, "fail"), (8.0, "fail"), (12.1, "fail")]
    assert r.weights()[0] == (0.0, 10) and r.weights()[-1] == (r.steps[-1].t, 0)


def test_the_chart_has_a_marker_per_step_the_thresholds_and_the_outcome():
    chart = svg(last_rollout(rolled_back_history()))
    assert len(re.findall(r'<circle class="step result-fail"', chart)) == 3
    assert 'class="outcome-label"' in chart and ">rolled back</text>" in chart
    assert "at least 99 %" in chart and "at most 500 ms" in chart
    assert chart.count('<polyline class="canary"') == 2 and chart.count('<polyline class="stable"') == 2
    assert "<script" not in chart and "style=" not in chart


def test_a_promoted_rollout_ends_at_100_and_an_operator_abort_is_called_an_abort():
    history = [{"time": 0.0, "event": "analysis started", "version": "v2", "weight": 25, "settings": SETTINGS},
               {"time": 4.0, "event": "analysis", "version": "v2", "weight": 25, "result": "pass", "reason": "ok",
                "canary": m(100, 100.0, 3.0)},
               {"time": 8.0, "event": "promoted", "version": "v2", "by": "gatekeeper (analysis)"}]
    r = last_rollout(history)
    assert r.outcome == "promoted" and r.weights()[-1] == (8.0, 100)
    history[-1] = {"time": 8.0, "event": "aborted", "version": "v2", "by": "operator"}
    assert last_rollout(history).outcome == "aborted"


def test_a_new_rollout_replaces_the_last_and_other_versions_events_are_not_its_steps():
    history = rolled_back_history() + [
        {"time": 200.0, "event": "analysis started", "version": "v4", "weight": 10, "settings": SETTINGS},
        {"time": 204.0, "event": "analysis", "version": "v2", "weight": 10, "result": "fail", "reason": "late"}]
    r = last_rollout(history)
    assert (r.version, r.outcome, r.steps) == ("v4", "running", [])
    assert "<svg" in svg(r)                     # a rollout without a step yet still draws
    assert last_rollout([{"time": 1.0, "event": "promoted", "version": "v1"}]) is None


def test_steps_without_requests_draw_no_figure():
    history = [{"time": 0.0, "event": "analysis started", "version": "v2", "weight": 50, "settings": SETTINGS},
               {"time": 4.0, "event": "analysis", "version": "v2", "weight": 50, "result": "hold",
                "reason": "too little traffic", "canary": m(0, None, None)}]
    chart = svg(last_rollout(history))
    assert 'class="step result-hold"' in chart and '<polyline class="canary"' not in chart


def status(**over):
    s = {"policy": {"mode": "auto", "stable": "v1", "canary": "", "weight": 0, "aborted": ""}, "policy_error": "",
         "instances": [{"serving": True, "host": "h1", "gate": "passing"}], "rollback": None, "analysis": None}
    s.update(over)
    return s


def test_the_badge_says_the_most_pressing_state_first():
    assert badge(status()) == ("serving", "ok")
    assert badge(status(policy_error="bad json"))[1] == "bad"
    assert badge(status(instances=[{"serving": False, "host": "h1", "gate": "critical"}])) == ("no admitted instance", "bad")
    healing = [{"serving": True, "host": "h1", "gate": "passing", "healing": {"gave_up": True}}]
    assert badge(status(instances=healing)) == ("gave up healing", "bad")
    assert badge(status(analysis={"status": "running", "weight": 30})) == ("canary in analysis at 30%", "warn")
    assert badge(status(analysis={"status": "rolled back", "weight": 0},
                        policy={"mode": "progressive", "stable": "v1", "canary": "", "weight": 0, "aborted": "v2"})) \
        == ("rolled back (v2 aborted)", "warn")
    assert badge(status(policy={"mode": "manual", "stable": "v1", "canary": "v2", "weight": 25, "aborted": ""})) \
        == ("canary v2 at 25%", "warn")
    assert badge(status(rollback={"version": "v0"})) == ("rolling back to v0", "warn")


def test_instances_are_counted_per_host():
    rows = [{"host": "a", "admitted": True}, {"host": "a", "admitted": False}, {"host": "b", "admitted": True}]
    assert per_host(rows) == {"a": "1/2", "b": "1/1"}


def test_a_session_lives_while_used_and_expires_when_idle():
    now = [0.0]
    sessions = Sessions(idle_seconds=60, clock=lambda: now[0])
    s = sessions.open("secret-token", "operator", True)
    assert s.id != s.csrf and len(s.id) >= 40 and "secret-token" not in s.id
    now[0] = 50
    assert sessions.lookup(s.id) == (s, "")
    now[0] = 100                                # 50 s after the last use
    assert sessions.alive(s.id) and sessions.lookup(s.id)[0] is s
    now[0] = 161
    assert not sessions.alive(s.id)
    assert sessions.lookup(s.id) == (None, EXPIRED)
    assert sessions.lookup(s.id) == (None, EXPIRED)      # said again to the page's next request
    assert sessions.lookup(None) == (None, UNKNOWN) and sessions.lookup("guess") == (None, UNKNOWN)
    t = sessions.open("x", "viewer", False)
    sessions.close(t.id)
    assert sessions.lookup(t.id) == (None, UNKNOWN) and len(sessions) == 0


def test_csrf_tokens_compare_whole_and_never_empty():
    assert same_secret("abc", "abc") and not same_secret("abc", "abd") and not same_secret("", "")


def test_a_damaged_history_entry_draws_without_failing():
    history = [{"time": "yesterday", "event": "analysis started", "version": "v2", "weight": "ten",
                "settings": {"interval": "4", "success_rate": None}},
               {"time": 4.0, "event": "analysis", "version": "v2", "weight": [1], "result": "<b>pass</b>",
                "reason": "<script>x</script>", "canary": "not a dict"}]
    r = last_rollout(history)
    assert (r.weight, r.steps[0].weight, r.steps[0].canary) == (0, 0, None)
    chart = svg(r)
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "result-&lt;b&gt;" in chart


def test_behind_a_proxy_forms_must_come_from_the_public_url():
    from aiohttp.test_utils import make_mocked_request
    from aiohttp import web
    from dashboard.server import CONFIG, Config, cross_origin

    def post(config, origin):
        app = web.Application()
        app[CONFIG] = config
        return cross_origin(make_mocked_request("POST", "/services/x/actions", app=app,
                                                headers={"Host": "127.0.0.1:8005", "Origin": origin}))
    direct = Config("127.0.0.1:8500")
    assert post(direct, "http://127.0.0.1:8005") == ""
    assert "refused" in post(direct, "http://127.0.0.1:9999") and "refused" in post(direct, "null")
    proxied = Config("127.0.0.1:8500", public_url="https://dash.example.com")
    assert post(proxied, "https://dash.example.com") == ""
    assert "refused" in post(proxied, "http://127.0.0.1:8005") and "--public-url" in post(proxied, "https://evil.test")
