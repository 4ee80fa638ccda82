"""The proxy.* route labels: each value is checked by its allow-list, a hostile one refuses the
container with the label's rule, and what is admitted is what nginx's side takes (the push
contract). The settings' effects on a real nginx: tests/integration/test_route_table.py and
tests/e2e/test_routing_modes.py."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from catalog import route_settings as rs
from catalog.validation import InvalidValue
from proxy_reloader import backends, contract
from registrator.translate import Rejected, instances_for
from tests.unit.test_translate import S, container

HOSTILE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
NGINX_BREAKERS = ["5s;", "5s }", "1m\nallow all", "off; allow all", "10.0.0.0/8;deny", "$host", "'5s'", "5s #", "{", "\x00"]


@pytest.mark.parametrize("key", sorted(rs.SETTINGS))
@pytest.mark.parametrize("raw", NGINX_BREAKERS)
def test_a_value_that_would_break_out_of_an_nginx_directive_is_refused_by_every_setting(key, raw):
    with pytest.raises(InvalidValue) as err:
        rs.check(key, raw)
    assert err.value.field == f"proxy.{key}" and err.value.rule


@pytest.mark.parametrize("key", sorted(rs.SETTINGS))
@settings(max_examples=150, deadline=None)
@given(raw=HOSTILE)
def test_whatever_a_setting_admits_is_plain_text_and_the_contract_takes_it(key, raw):
    try:
        canonical = rs.check(key, raw)
    except InvalidValue:
        return
    assert all(c.isalnum() or c in ".:/," for c in canonical), canonical
    route = {"path": "/x/", "hosts": [], **rs.for_proxy([(key, canonical)])}
    assert contract.check_route(route, "x.route") is None


def test_surrounding_blanks_are_trimmed_and_never_reach_the_proxy():
    assert rs.check("timeout", " 5s\n") == "5s" and rs.check("body_size", "\t1m ") == "1m"


@pytest.mark.parametrize("raw, seconds", [("1s", 1), ("500ms", None), ("2m", 120), ("3600s", 3600), ("60m", 3600)])
def test_timeouts_are_whole_units_from_one_second_to_an_hour(raw, seconds):
    if seconds is None:
        with pytest.raises(InvalidValue, match="from 1s to 3600s"):
            rs.check("timeout", raw)
    else:
        assert rs.for_proxy([("timeout", rs.check("timeout", raw))]) == {"timeout": seconds}


@pytest.mark.parametrize("raw", ["0s", "61m", "3601s", "5", "5h", "-5s", "5.5s", " s", "05s"])
def test_a_timeout_out_of_range_or_of_another_form_is_refused(raw):
    with pytest.raises(InvalidValue, match="proxy.timeout"):
        rs.check("timeout", raw)


def test_the_connect_timeout_goes_from_ten_milliseconds_to_a_minute():
    assert rs.for_proxy([("connect_timeout", "10ms")]) == {"connect_timeout": 0.01}
    assert rs.for_proxy([("connect_timeout", "1m")]) == {"connect_timeout": 60}
    for raw in ("9ms", "61s", "2m"):
        with pytest.raises(InvalidValue, match="from 0.01s to 60s"):
            rs.check("connect_timeout", raw)


@pytest.mark.parametrize("raw, size", [("1", 1), ("1k", 1024), ("10m", 10 * 1024 ** 2), ("1g", 1024 ** 3),
                                       ("1024m", 1024 ** 3)])
def test_body_sizes_are_bytes_or_binary_units_up_to_one_gibibyte(raw, size):
    assert rs.for_proxy([("body_size", rs.check("body_size", raw))]) == {"body_size": size}


@pytest.mark.parametrize("raw", ["0", "2g", "1025m", "1t", "10M", "1.5m", "m", "-1"])
def test_a_body_size_out_of_range_or_of_another_form_is_refused(raw):
    with pytest.raises(InvalidValue, match="from 1 to 1g"):
        rs.check("body_size", raw)


def test_retries_and_buffering():
    assert rs.for_proxy([("retries", "0"), ("buffering", "off")]) == {"retries": 0, "buffering": False}
    assert rs.for_proxy([("retries", "10"), ("buffering", "on")]) == {"retries": 10, "buffering": True}
    for key, raw in (("retries", "11"), ("retries", "-1"), ("retries", "two"), ("buffering", "false"),
                     ("buffering", "OFF")):
        with pytest.raises(InvalidValue, match=f"proxy.{key}"):
            rs.check(key, raw)


def test_the_allow_list_is_kept_canonical_sorted_and_without_repeats():
    assert rs.check("allow", " 192.0.2.7, 10.0.0.0/8,192.0.2.7/32 ,2001:DB8::/32") == \
        "10.0.0.0/8,192.0.2.7/32,2001:db8::/32"


@pytest.mark.parametrize("raw", ["", "10.0.0.1/8", "10.0.0.0/33", "300.1.1.1", "example.com", "10.0.0.0/8;",
                                 ",".join(f"10.0.{i}.0/24" for i in range(33)), "::ffff:1.2.3.4/128 x"])
def test_an_allow_list_with_a_bad_network_or_too_many_is_refused(raw):
    with pytest.raises(InvalidValue, match="client networks"):
        rs.check("allow", raw)


@settings(max_examples=100, deadline=None)
@given(nets=st.lists(st.one_of(st.ip_addresses(v=4).map(lambda a: ipaddress.ip_network(a)),
                               st.ip_addresses(v=6).map(lambda a: ipaddress.ip_network(a))), min_size=1, max_size=32))
def test_any_list_of_addresses_is_admitted_and_the_lua_side_parses_each(nets):
    canonical = rs.check("allow", ",".join(str(n) for n in nets))
    assert set(canonical.split(",")) == {n.with_prefixlen for n in nets}
    assert contract.check_route({"path": "/x/", "allow": canonical.split(",")}, "x.route") is None


def test_host_names_exact_and_wildcard_sorted_without_repeats():
    assert rs.parse_hosts("proxy.host", "b.test, *.a.test,b.test") == "*.a.test,b.test"
    assert rs.hosts_of("*.a.test,b.test") == ("*.a.test", "b.test") and rs.hosts_of("") == ()


@pytest.mark.parametrize("raw", ["", "*", "*.", "a.*.test", "**.a.test", "A.test", "a_b.test", "a..test", "-a.test",
                                 "a.test;", "a.test b.test", ",".join(f"h{i}.test" for i in range(17)),
                                 "a" * 64 + ".test"])
def test_hostile_or_malformed_host_names_are_refused(raw):
    with pytest.raises(InvalidValue, match="host names"):
        rs.parse_hosts("proxy.host", raw)


def test_an_unknown_setting_is_named_with_the_known_ones():
    with pytest.raises(InvalidValue, match="proxy.timeout"):
        rs.check("gzip", "on")


def test_a_container_with_a_bad_route_label_is_refused_naming_the_label_and_the_rule():
    with pytest.raises(Rejected) as err:
        instances_for(container({"SERVICE_NAME": "demo", "proxy.body_size": "10mb"}), S)
    assert "proxy.body_size" in str(err.value) and "from 1 to 1g" in str(err.value)


def test_a_containers_route_labels_reach_its_consul_metadata_in_canonical_form():
    [inst] = instances_for(container({"SERVICE_NAME": "demo", "proxy.host": "b.test,*.a.test",
                                      "proxy.allow": "10.0.0.0/8, 192.0.2.7", "proxy.timeout": "5s",
                                      "SERVICE_PROXY_TIMEOUT": "99s"}), S)
    meta = inst.meta()
    assert meta["proxy_host"] == "*.a.test,b.test"
    assert meta["proxy_allow"] == "10.0.0.0/8,192.0.2.7/32" and meta["proxy_timeout"] == "5s"
    assert rs.from_meta(meta) == (("allow", "10.0.0.0/8,192.0.2.7/32"), ("timeout", "5s"))


@pytest.mark.parametrize("raw, canonical, pushed", [
    ("50r/s,burst=100", "50r/s,burst=100", {"rate": 50, "burst": 100}),
    ("30r/m", "30r/m", {"rate": 0.5, "burst": 0}),
    ("5r/s, burst=007", "5r/s,burst=7", {"rate": 5, "burst": 7}),
])
def test_a_rate_limit_is_requests_per_second_or_minute_with_a_burst(raw, canonical, pushed):
    assert rs.check("rate_limit", raw) == canonical
    assert rs.for_proxy([("rate_limit", canonical)]) == {"rate_limit": pushed}


@pytest.mark.parametrize("raw", ["0r/s", "50", "50r/h", "50r/s,burst=-1", "50r/s,burst=1000000", "1000000r/s",
                                 "50r/s;burst=1", "50r/s,burst=1,nodelay", "5.5r/s"])
def test_a_malformed_rate_limit_is_refused(raw):
    with pytest.raises(InvalidValue, match="proxy.rate_limit"):
        rs.check("rate_limit", raw)


def test_the_protocol_is_http_or_grpc():
    assert rs.for_proxy([("protocol", rs.check("protocol", "grpc"))]) == {"protocol": "grpc"}
    for raw in ("GRPC", "h2", "grpcs", ""):
        with pytest.raises(InvalidValue, match="http \\(the default\\) or grpc"):
            rs.check("protocol", raw)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(rs.SETTINGS) + ["host"]), value=HOSTILE)
def test_route_labels_written_straight_into_consul_reach_the_proxy_only_valid_and_canonical(key, value):
    """Anyone who may write to Consul could register an instance with any metadata: what the
    proxy gets is what registrator would have written, or the service is left out, named."""
    from catalog.model import Instance, RegisteredInstance
    from proxy_reloader.view import route_of
    fields = {"proxy_host": value} if key == "host" else {"route_settings": ((key, value),)}
    inst = Instance(id="h:web:8080", service="demo", address="127.0.0.1", port=1, version="v1", container_id="c",
                    container_name="web", image="demo:v1", registered_by="r", **fields)
    route, error = route_of("demo", [RegisteredInstance(inst, {inst.gate_check_id: "passing"})], None)
    if route is None:
        assert error and ("proxy_" in error or "host" in error)
        return
    if key == "host":
        assert route.host == (rs.parse_hosts("proxy.host", value) if value else "")
    else:
        assert route.settings == ((key, rs.check(key, value)),)
    assert contract.check_entry("demo", backends.entry(route)) is None


@pytest.mark.parametrize("key, raw, rule", [
    ("timeout", "5", "a whole number followed by ms, s or m, from 1s to 3600s, such as 5s"),
    ("timeout", "2h", "a whole number followed by ms, s or m, from 1s to 3600s, such as 5s"),
    ("connect_timeout", "61s", "a whole number followed by ms, s or m, from 0.01s to 60s, such as 5s"),
    ("body_size", "2g", "a whole number of bytes, or of k, m or g (1024-based), from 1 to 1g, such as 10m"),
    ("body_size", "ten", "a whole number of bytes, or of k, m or g (1024-based), from 1 to 1g, such as 10m"),
    ("retries", "11", "a whole number of retries from 0 (never retry) to 10"),
    ("buffering", "no", "on or off"),
    ("protocol", "h2", "http (the default) or grpc"),
    ("rate_limit", "5r/h", "N requests per second or minute (Nr/s or Nr/m, N from 1 to 999999), optionally "
                           "with ,burst=B (B from 0 to 999999), such as 50r/s,burst=100"),
    ("allow", "10.0.0.0/8;", "one to 32 client networks separated by commas, each an IPv4 or IPv6 address or "
                             "network with no host bits set, such as 10.0.0.0/8,192.0.2.7,2001:db8::/32"),
])
def test_a_refusal_names_the_label_the_value_and_the_whole_rule(key, raw, rule):
    with pytest.raises(InvalidValue) as err:
        rs.check(key, raw)
    assert (err.value.field, err.value.value, err.value.rule) == (f"proxy.{key}", raw, rule)
    assert str(err.value) == f"proxy.{key}={raw!r} is invalid: {rule}"


def test_a_bad_network_in_a_list_is_named_alone():
    with pytest.raises(InvalidValue) as err:
        rs.check("allow", "10.0.0.0/8,10.0.0.1/8")
    assert (err.value.field, err.value.value) == ("proxy.allow", "10.0.0.1/8")


def test_an_unknown_or_non_text_setting_is_refused_naming_the_known_ones():
    with pytest.raises(InvalidValue) as err:
        rs.check("gzip", "on")
    assert (err.value.field, err.value.value) == ("proxy.gzip", "on")
    assert err.value.rule == "a known route setting: " + ", ".join(f"proxy.{k}" for k in rs.SETTINGS)
    with pytest.raises(InvalidValue) as err:
        rs.check("timeout", 5)
    assert (err.value.field, err.value.value, err.value.rule) == ("proxy.timeout", 5, "text")


def test_the_limits_on_counts_and_lengths_are_inclusive():
    sixteen = ",".join(f"h{i}.test" for i in range(16))
    assert len(rs.hosts_of(rs.parse_hosts("proxy.host", sixteen))) == 16
    longest = ".".join(["a" * 63] * 3) + "." + "b" * 61                      # 253 characters
    assert rs.parse_hosts("proxy.host", longest) == longest
    with pytest.raises(InvalidValue) as err:
        rs.parse_hosts("proxy.host", longest + "b")
    assert err.value.value == longest + "b" and err.value.rule == rs.HOSTS_RULE
    nets = ",".join(f"10.0.{i}.0/24" for i in range(32))
    assert len(rs.check("allow", nets).split(",")) == 32
    assert rs.check("allow", "0.0.0.0/0,::/0") == "0.0.0.0/0,::/0"


def test_a_per_minute_rate_is_kept_to_six_decimals_of_a_second():
    assert rs.for_proxy([("rate_limit", "1r/m")]) == {"rate_limit": {"rate": 0.016667, "burst": 0}}


def test_http_is_a_protocol_too():
    assert rs.check("protocol", "http") == "http"


def test_only_known_settings_are_route_metadata():
    assert rs.is_setting_meta("proxy_timeout") and rs.is_setting_meta("proxy_allow")
    assert not rs.is_setting_meta("proxy_gzip") and not rs.is_setting_meta("timeout")
    assert not rs.is_setting_meta("proxy_host") and not rs.is_setting_meta("version")


def test_settings_read_back_must_be_valid_and_canonical():
    rs.check_all([("timeout", "5s"), ("allow", "10.0.0.0/8,192.0.2.7/32")])      # as registrator writes them
    with pytest.raises(InvalidValue) as err:
        rs.check_all([("timeout", "5s"), ("allow", "192.0.2.7,10.0.0.0/8")])
    assert (err.value.field, err.value.value) == ("proxy_allow", "192.0.2.7,10.0.0.0/8")
    assert err.value.rule == "the canonical form of the setting ('10.0.0.0/8,192.0.2.7/32')"
    with pytest.raises(InvalidValue) as err:
        rs.check_all([("timeout", "0s")])
    assert err.value.field == "proxy_timeout"


def test_host_lists_read_back_must_be_canonical():
    assert rs.check_canonical_hosts("proxy_host", "*.a.test,b.test") == "*.a.test,b.test"
    with pytest.raises(InvalidValue) as err:
        rs.check_canonical_hosts("proxy_host", "b.test,*.a.test")
    assert (err.value.field, err.value.value) == ("proxy_host", "b.test,*.a.test")
    assert err.value.rule == rs.HOSTS_RULE + ", written sorted with no blanks"
    with pytest.raises(InvalidValue):
        rs.parse_hosts("proxy.host", None)
