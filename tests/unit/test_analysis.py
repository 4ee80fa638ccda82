"""Progressive mode's decisions (gatekeeper.analysis) and its settings' validation: every way a
canary advances, holds, is promoted or rolled back, pinned without I/O."""
import math

import pytest

from catalog.model import PROMOTED, ROLLED_BACK, RUNNING, Analysis, AnalysisState, RoutingPolicy
from catalog.validation import InvalidValue, parse_analysis_label, parse_policy, validate_analysis
from gatekeeper.promotion.analysis import (ADVANCE, FAIL, HOLD, INCONCLUSIVE, KEEP_CHECKS, PASS, PROMOTE, ROLLBACK, STAY, ms, pct,
                                 Measurement, breaches, judge, start)

S = Analysis(step=10, max_weight=30, interval=5, threshold=2, min_requests=20, success_rate=99, p99_ms=500)
GOOD = Measurement(100, 100.0, 40.0)


def at(weight, failed=0, checks=()):
    return AnalysisState("demo", "v2", weight, 0.0, 5.0, failed=failed, checks=list(checks))


def test_a_new_analysis_starts_at_the_first_step_and_checks_one_interval_later():
    s = start("demo", "v2", S, now=100.0)
    assert (s.weight, s.next_check, s.failed, s.status, s.checks) == (10, 105.0, 0, RUNNING, [])
    assert start("demo", "v2", Analysis(step=50, max_weight=40), now=0).weight == 40


def test_a_passed_check_advances_by_step_and_schedules_the_next():
    d = judge(S, at(10), GOOD, now=50.0)
    assert (d.action, d.check.result, d.state.weight, d.state.next_check) == (ADVANCE, PASS, 20, 55.0)
    assert d.check.weight == 10 and d.check.canary == {"requests": 100, "success_rate": 100.0, "p99_ms": 40.0}
    assert "10 % -> 20 %" in d.check.reason


def test_the_step_never_passes_max_and_a_pass_at_max_promotes():
    assert judge(Analysis(step=20, max_weight=30), at(20), GOOD).state.weight == 30
    d = judge(S, at(30), GOOD)
    assert (d.action, d.state.status) == (PROMOTE, PROMOTED)


@pytest.mark.parametrize("m,why", [(Measurement(100, 98.9, 40.0), "success rate 98.9 % < 99 %"),
                                   (Measurement(100, 100.0, 501.0), "p99 501 ms > 500 ms"),
                                   (Measurement(100, 90.0, 1500.0), "success rate 90.0 % < 99 %; p99 1500 ms > 500 ms")])
def test_a_metric_out_of_range_fails_the_check_and_holds_the_weight(m, why):
    d = judge(S, at(20), m)
    assert (d.action, d.check.result, d.state.weight, d.state.failed) == (STAY, FAIL, 20, 1)
    assert why in d.check.reason and "1 of 2" in d.check.reason


def test_the_thresholdth_failed_check_rolls_back_and_says_at_which_weight_and_why():
    first = judge(S, at(20), GOOD)
    second = judge(S, first.state, Measurement(100, 96.8, 40.0))
    third = judge(S, second.state, Measurement(100, 96.8, 40.0))
    assert second.action == STAY and third.action == ROLLBACK
    assert (third.state.status, third.state.weight, third.state.failed) == (ROLLED_BACK, 0, 2)
    assert third.check.reason == "rolled back at 30 %: success rate 96.8 % < 99 % (2 failed checks of 3)"


def test_exactly_at_the_thresholds_passes():
    assert judge(S, at(10), Measurement(20, 99.0, 500.0)).action == ADVANCE


@pytest.mark.parametrize("m", [Measurement(0, None, None), Measurement(19, 0.0, 9000.0)])
def test_too_little_traffic_holds_says_so_and_never_counts_as_pass_or_fail(m):
    d = judge(S, at(30, failed=1), m)
    assert (d.action, d.check.result, d.state.weight, d.state.failed, d.state.status) == (STAY, HOLD, 30, 1, RUNNING)
    assert f"too little traffic to judge: {m.requests:.0f} requests < 20 in 5 s" in d.check.reason


def test_unreadable_metrics_are_inconclusive_not_a_pass():
    d = judge(S, at(30, failed=1), None, error="Prometheus at http://x: ConnectionError", now=10.0)
    assert (d.action, d.check.result, d.state.weight, d.state.failed) == (STAY, INCONCLUSIVE, 30, 1)
    assert "ConnectionError" in d.check.reason and d.state.next_check == 15.0


def test_the_stable_versions_figures_are_kept_beside_the_canarys():
    d = judge(S, at(10), GOOD, stable=Measurement(500, 99.9, 30.0))
    assert d.check.stable == {"requests": 500, "success_rate": 99.9, "p99_ms": 30.0}


def test_the_state_keeps_the_last_checks_only():
    state = at(10)
    for _ in range(KEEP_CHECKS + 5):
        state = judge(Analysis(step=1, max_weight=100, min_requests=10**6), state, GOOD).state
    assert len(state.checks) == KEEP_CHECKS


def test_the_state_round_trips_through_json():
    state = judge(S, at(10), GOOD, stable=GOOD).state
    assert AnalysisState.from_json(state.to_json()) == state


def test_breaches_with_no_p99_judge_the_success_rate_alone():
    assert breaches(S, Measurement(50, 100.0, None)) == []


# --- the settings, as stored in the routing policy --------------------------------------------
def test_a_policy_without_settings_gets_the_defaults_and_round_trips():
    p = parse_policy('{"service": "demo", "mode": "progressive"}')
    assert p.analysis == Analysis() and parse_policy(p.to_json()) == p
    assert p.analysis.step == 10 and p.analysis.interval == 10.0 and p.analysis.threshold == 3


@pytest.mark.parametrize("settings,field", [
    ({"step": 0}, "step"), ({"step": 101}, "step"), ({"step": 5.5}, "step"), ({"step": True}, "step"),
    ({"interval": 0.5}, "interval"), ({"interval": math.nan}, "interval"), ({"interval": "10"}, "interval"),
    ({"threshold": 0}, "threshold"), ({"min_requests": -1}, "min_requests"), ({"success_rate": 100.5}, "success_rate"),
    ({"p99_ms": 0}, "p99_ms"), ({"step": 50, "max_weight": 40}, "max_weight"), ({"stepp": 5}, "stepp")])
def test_a_bad_setting_is_refused_naming_it_and_its_rule(settings, field):
    with pytest.raises(InvalidValue) as err:
        validate_analysis(settings)
    assert err.value.field == f"analysis.{field}"


def test_mode_progressive_is_valid_and_any_other_mode_is_not():
    assert parse_policy(RoutingPolicy("demo", mode="progressive").to_json()).mode == "progressive"
    with pytest.raises(InvalidValue, match="'auto', 'manual' or 'progressive'"):
        parse_policy('{"service": "demo", "mode": "gradual"}')


def test_history_shows_each_step_with_its_figures():
    from gatekeeper.report.status import history_details
    first = judge(S, at(20), Measurement(250, 96.8, 40.0))
    d = judge(S, first.state, Measurement(250, 96.8, 40.0), stable=Measurement(1000, 100.0, 30.0))
    entry = {"event": "analysis", "version": "v2", "weight": d.check.weight, "result": d.check.result,
             "reason": d.check.reason, "canary": d.check.canary, "stable": d.check.stable}
    assert history_details(entry) == (
        "v2 at 20%: fail: rolled back at 20 %: success rate 96.8 % < 99 % (2 failed checks of 2) "
        "[canary 250 req, success 96.8 %, p99 40 ms; stable 1000 req, success 100.0 %, p99 30 ms]")


def test_the_words_an_operator_reads_in_status_and_history():
    assert (pct(None), ms(None), pct(96.84), ms(1499.6)) == ("-", "-", "96.8 %", "1500 ms")
    assert Measurement(0, None, None).describe() == "no requests"
    assert Measurement(120, 99.5, 41.0).describe() == "120 requests, success 99.5 %, p99 41 ms"
    s = start("demo", "v2", S, now=7.0)
    assert (s.service, s.version, s.started) == ("demo", "v2", 7.0)
    d = judge(S, s, None, now=9.0)
    assert d.check.time == 9.0 and d.state.reason == d.check.reason == "metrics unavailable (no answer); holding at 10 %"
    one = Analysis(threshold=1)
    both = judge(one, at(10), Measurement(100, 90.0, 900.0))
    assert both.check.reason == "rolled back at 10 %: success rate 90.0 % < 99 %; p99 900 ms > 500 ms (1 failed check of 1)"
    assert judge(S, at(30), GOOD).check.reason == "100 requests, success 100.0 %, p99 40 ms at 30 %: promoted"


def test_settings_at_their_bounds_are_accepted_and_numbers_keep_their_kind():
    a = validate_analysis({"step": 1, "max_weight": 1, "interval": 1, "threshold": 1, "min_requests": 0,
                           "success_rate": 0, "p99_ms": 1})
    assert (a.step, a.max_weight, a.interval, a.min_requests) == (1, 1, 1.0, 0)
    assert type(a.interval) is float and type(a.success_rate) is float and type(a.p99_ms) is float
    b = validate_analysis({"step": 100, "interval": 3600, "threshold": 100, "min_requests": 1_000_000,
                           "success_rate": 100, "p99_ms": 600_000})
    assert (b.step, b.max_weight, b.success_rate) == (100, 100, 100.0)
    p = parse_policy(RoutingPolicy("demo", mode="progressive", analysis=Analysis(step=25, interval=3.0)).to_json())
    assert (p.analysis.step, p.analysis.interval) == (25, 3.0)


def test_the_refusals_an_operator_reads_name_the_setting_and_the_rule():
    def refusal(data):
        with pytest.raises(InvalidValue) as err:
            validate_analysis(data)
        return str(err.value)
    assert refusal([1]) == "analysis=[1] is invalid: a JSON object of progressive-mode settings"
    assert refusal({"stepp": 5}) == ("analysis.stepp=5 is invalid: not a setting; the settings are step, max_weight, "
                                     "interval, threshold, min_requests, success_rate, p99_ms")
    assert refusal({"step": 50, "max_weight": 40}) == ("analysis.max_weight=40 is invalid: a whole number of percent "
                                                       "from 1 to 100, at least step")
    assert refusal({"interval": 0}) == "analysis.interval=0 is invalid: seconds from 1 to 3600"


def test_the_analysis_label_reads_comma_separated_settings():
    assert parse_analysis_label(" step=20 , interval=5,, p99_ms=800 ") == {"step": 20, "interval": 5.0, "p99_ms": 800.0}
    assert parse_analysis_label("") == {}
    for bad, message in (("step", "comma-separated SETTING=NUMBER, the settings being step, max_weight, interval, "
                                  "threshold, min_requests, success_rate, p99_ms (for example step=10,interval=5)"),
                         ("step=1=2", "analysis.step='1=2' is invalid: a whole number of percent from 1 to 100"),
                         ("interval=x", "analysis.interval='x' is invalid: seconds from 1 to 3600")):
        with pytest.raises(InvalidValue) as err:
            parse_analysis_label(bad)
        assert message in str(err.value), str(err.value)


def test_history_names_drained_containers_by_name_and_host_not_by_their_record():
    from gatekeeper.report.status import history_details, rollback_line
    entry = {"event": "drained", "version": "v1", "stable": "v2", "by": "gatekeeper", "containers": [
        {"name": "web-a", "node": "h1", "id": "c0ffee", "started": "t", "instance": "h1:web-a:8080"}]}
    assert history_details(entry) == "by gatekeeper, containers web-a on h1, stable v2, version v1"
    waiting = {"version": "v1", "by": "operator", "asked": 100.0, "deadline": 700.0, "started": True,
               "containers": [{"name": "web-a", "node": "h1"}, {"name": "web-b", "node": "h2"}]}
    assert rollback_line(waiting, now=112.0) == (
        "to v1 (asked by operator 12 s ago): asked its hosts to start web-a on h1, web-b on h2; v1 becomes "
        "stable once one passes its tests again (given up in 588 s)")
