import pytest

from catalog import validation as v
from catalog.model import MODES, RoutingPolicy

HOSTILE = [" ", ";", "{", "}", "#", "'", '"', "$", "\\", "\r", "\n", "\x00", "`"]


@pytest.mark.parametrize("field,good", [
    ("service", "demo"), ("service", "demo-api2"), ("version", "v1.2.3_rc-1"),
    ("proxy_path", "/demo/"), ("proxy_path", "/api/demo/"), ("proxy_host", "demo.example.com"),
    ("image", "registry.local:5000/team/demo:v2"), ("address", "127.0.0.1"),
])
def test_accepts_ordinary_values(field, good):
    assert v.check(field, good) == good


@pytest.mark.parametrize("field,base", [
    ("service", "demo"), ("version", "v1"), ("proxy_path", "/demo/"), ("proxy_host", "demo.local"),
    ("image", "demo:v1"), ("address", "127.0.0.1"),
])
@pytest.mark.parametrize("bad", HOSTILE)
def test_rejects_every_character_that_could_break_a_config(field, base, bad):
    with pytest.raises(v.InvalidValue) as err:
        v.check(field, base[:-1] + bad + base[-1:])
    assert str(err.value).startswith(f"{field}=")


@pytest.mark.parametrize("field,value,reason", [
    ("service", "Demo", "upper case"), ("service", "-demo", "leading dash"), ("service", "a" * 64, "too long"),
    ("proxy_path", "demo/", "relative"), ("proxy_path", "/demo", "no trailing slash"),
    ("version", "", "empty"), ("version", "v" * 65, "too long"),
])
def test_rejects_malformed_values(field, value, reason):
    with pytest.raises(v.InvalidValue):
        v.check(field, value)


def test_error_names_field_value_and_rule():
    with pytest.raises(v.InvalidValue) as err:
        v.check("proxy.path", "/de mo/", "proxy_path")
    text = str(err.value)
    assert "proxy.path" in text and "'/de mo/'" in text and "ending in '/'" in text


def test_port_rules():
    assert v.check_port("port", "8080") == 8080
    for bad in ("0", "65536", "80a", "", None, "1e3"):
        with pytest.raises(v.InvalidValue):
            v.check_port("port", bad)


def test_policy_roundtrip_and_errors():
    p = RoutingPolicy(service="demo", stable="v2", canary="v3", weight=20, mode="manual", previous="v1")
    assert v.parse_policy(p.to_json()) == p
    for bad in ({"service": "demo", "weight": 101}, {"service": "demo", "mode": "yolo"},
                {"service": "demo", "stable": "v 1"}, {"service": "de;mo"}, [], {"service": "demo", "weight": True}):
        with pytest.raises(v.InvalidValue):
            v.validate_policy(bad)


from hypothesis import given, settings, strategies as st

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                           | st.text(max_size=30), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=10)
policy_like = st.fixed_dictionaries({}, optional={
    **{k: json_values | st.text(max_size=70) for k in ("service", "stable", "canary", "previous", "weight", "updated")},
    "mode": st.sampled_from(MODES) | json_values | st.text(max_size=70)})


@settings(max_examples=500)
@given(st.one_of(json_values, policy_like))
def test_the_routing_policy_parser_accepts_only_valid_policies_and_fails_clearly(data):
    try:
        p = v.validate_policy(data)
    except v.InvalidValue as exc:
        assert str(exc)                       # names the field and the rule
        return
    assert 0 <= p.weight <= 100 and p.mode in MODES
    for version in (p.stable, p.canary, p.previous):
        assert version == "" or v.check("version", version)
    assert v.parse_policy(p.to_json()) == p


@pytest.mark.parametrize("raw,message", [
    ("[1]", "policy=[1] is invalid: a JSON object"),
    ("{not json", "policy='{not json' is invalid: a JSON routing policy"),
    ('{"service": "Demo"}', "service='Demo' is invalid: a DNS label"),
    ('{"service": "demo", "canary": "v 2"}', "canary='v 2' is invalid: letters, digits"),
    ('{"service": "demo", "aborted": "v;2"}', "aborted='v;2' is invalid: letters, digits"),
    ('{"service": "demo", "weight": 101}', "weight=101 is invalid: a whole number from 0 to 100"),
    ('{"service": "demo", "weight": -1}', "weight=-1 is invalid: a whole number from 0 to 100"),
    ('{"service": "demo", "weight": true}', "weight=True is invalid: a whole number from 0 to 100"),
    ('{"service": "demo", "weight": 2.5}', "weight=2.5 is invalid: a whole number from 0 to 100"),
    ('{"service": "demo", "mode": "sometimes"}', "mode='sometimes' is invalid: 'auto', 'manual' or 'progressive'"),
    ('{"service": "demo", "updated": "yesterday"}', "updated='yesterday' is invalid: a number of seconds"),
])
def test_a_bad_policy_is_refused_naming_the_field_the_value_and_the_rule(raw, message):
    with pytest.raises(v.InvalidValue) as err:
        v.parse_policy(raw)
    assert str(err.value).startswith(message)


def test_a_minimal_policy_gets_the_documented_defaults_and_keeps_each_field():
    p = v.parse_policy('{"service": "demo"}')
    assert (p.stable, p.canary, p.weight, p.mode, p.previous, p.aborted, p.updated) == ("", "", 0, "auto", "", "", 0.0)
    full = RoutingPolicy("demo", stable="v1", canary="v2", weight=100, mode="manual", previous="v0",
                         updated=12.5, aborted="v3")
    assert v.parse_policy(full.to_json()) == full
    assert v.parse_policy('{"service": "demo", "weight": 0, "updated": 7}').updated == 7.0


def test_long_values_are_shortened_in_the_message_and_ports_are_whole_numbers():
    err = v.InvalidValue("proxy.path", "/" + "a" * 200, "a path")
    assert str(err) == f"proxy.path='/{'a' * 79}...' is invalid: a path"
    assert str(v.InvalidValue("weight", 5, "r")) == "weight=5 is invalid: r"
    assert v.check_port("port", "8080") == 8080 and v.check_port("port", 1) == 1 and v.check_port("p", 65535) == 65535
    for bad in ("0", "65536", "+80", "8o", None, "80.0"):
        with pytest.raises(v.InvalidValue, match="a whole number from 1 to 65535"):
            v.check_port("port", bad)
    assert v.valid("service", "demo") and not v.valid("service", "De mo") and not v.valid("service", None)
