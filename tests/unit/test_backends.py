"""The table entries proxy-reloader pushes (the Lua side's twin: tests/integration/test_push_endpoint.py)."""
import json

import pytest

from catalog.routing import Pool, Route
from proxy_reloader import backends

STABLE = Pool("v1", (("127.0.0.1", 1), ("127.0.0.1", 2)), ("v1", "v1"))
CANARY = Pool("v2", (("127.0.0.1", 3),), ("v2",))


def test_a_route_with_a_canary_carries_its_weight_and_every_server_its_version():
    e = backends.entry(Route("demo", "/demo/", "", STABLE, CANARY, 20))
    assert e == {"service": "demo", "weight": 20,
                 "stable": {"version": "v1", "servers": [["127.0.0.1", 1, "v1"], ["127.0.0.1", 2, "v1"]]},
                 "canary": {"version": "v2", "servers": [["127.0.0.1", 3, "v2"]]},
                 "route": {"path": "/demo/", "hosts": [], "strip_prefix": False}}


def test_no_admitted_instance_is_a_null_stable_pool_which_answers_503():
    assert backends.entry(Route("demo", "/demo/", "", None)) == {
        "service": "demo", "stable": None, "canary": None, "weight": 0,
        "route": {"path": "/demo/", "hosts": [], "strip_prefix": False}}


def test_the_route_carries_its_names_prefix_and_settings_in_the_units_nginx_uses():
    route = Route("demo", "/api/", "*.demo.test,demo.test", STABLE, strip_prefix=True,
                  settings=(("allow", "10.0.0.0/8,192.0.2.7/32"), ("body_size", "10m"), ("buffering", "off"),
                            ("connect_timeout", "250ms"), ("retries", "0"), ("timeout", "2m")))
    assert backends.entry(route)["route"] == {
        "path": "/api/", "hosts": ["*.demo.test", "demo.test"], "strip_prefix": True,
        "allow": ["10.0.0.0/8", "192.0.2.7/32"], "body_size": 10 * 1024 * 1024, "buffering": False,
        "connect_timeout": 0.25, "retries": 0, "timeout": 120}
    backends.push_body(1, {"demo": backends.entry(route)}, False)        # and the contract takes it


def test_a_mixed_pool_keeps_each_servers_own_version():
    mixed = Pool("*", (("127.0.0.1", 1), ("127.0.0.1", 2)), ("v1", "v2"))
    e = backends.entry(Route("demo", "/demo/", "", mixed))
    assert e["stable"] == {"version": "*", "servers": [["127.0.0.1", 1, "v1"], ["127.0.0.1", 2, "v2"]]}


def test_the_weight_of_a_route_without_canary_is_zero():
    assert backends.entry(Route("demo", "/demo/", "", STABLE, None, 40))["weight"] == 0


@pytest.mark.parametrize("entry", [
    {"service": "other", "stable": None, "canary": None, "weight": 0},
    {"service": "demo", "stable": {"version": "v1", "servers": []}, "canary": None, "weight": 0},
    {"service": "demo", "stable": {"version": "v1", "servers": [["127.0.0.1", 0, "v1"]]}, "canary": None, "weight": 0},
    {"service": "demo", "stable": {"version": "v1", "servers": [["a b", 1, "v1"]]}, "canary": None, "weight": 0},
    {"service": "demo", "stable": None, "canary": {"version": "v2", "servers": [["127.0.0.1", 1, "v2"]]}, "weight": 5},
    {"service": "demo", "stable": None, "canary": None, "weight": 101},
    {"service": "demo", "stable": None, "canary": None, "weight": "5"},
])
def test_entries_that_break_the_contract_are_never_pushed(entry):
    with pytest.raises(ValueError):
        backends.push_body(1, {"demo": entry}, False)


def test_a_push_body_is_compact_json_with_its_generation():
    body = json.loads(backends.push_body(7, {"demo": None}, True))
    assert body == {"generation": 7, "full": True, "services": {"demo": None}}


def test_the_table_file_is_written_whole(tmp_path):
    path = tmp_path / "backends.json"
    backends.write_table(path, 3, {"demo": backends.entry(Route("demo", "/demo/", "", STABLE))})
    assert json.loads(path.read_text())["services"]["demo"]["stable"]["version"] == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["backends.json"]


PEM = {"cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
       "key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"}
TOKEN, ANSWER = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA", "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


def test_certificates_and_challenges_ride_in_the_body_as_given_and_the_bytes_are_canonical():
    raw = backends.push_body(2, {"demo": None}, False, certificates={"shop.test": PEM, "old.test": None},
                             challenges={TOKEN: ANSWER})
    body = json.loads(raw)
    assert body["certificates"] == {"shop.test": PEM, "old.test": None}
    assert body["challenges"] == {TOKEN: ANSWER}
    assert raw == json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), "sorted, compact: one text"


@pytest.mark.parametrize("certificates, challenges, says", [
    ({"shop.test": {"cert": PEM["cert"]}}, None, "certificate shop.test must be {cert, key} or null"),
    ({"shop.test": {**PEM, "key": "not PEM"}}, None, "certificate shop.test: key must be PEM text"),
    (None, {TOKEN: "answer with spaces"}, f"challenge {TOKEN}: must be TOKEN: KEY_AUTHORIZATION or null"),
])
def test_a_certificate_or_challenge_that_breaks_the_contract_is_never_pushed(certificates, challenges, says):
    with pytest.raises(ValueError) as err:
        backends.push_body(1, {}, False, certificates=certificates, challenges=challenges)
    assert str(err.value).startswith(says)


def test_the_table_file_holds_the_keys_so_only_its_owner_reads_it(tmp_path):
    import stat
    path = tmp_path / "backends.json"
    backends.write_table(path, 4, {}, certificates={"shop.test": PEM}, challenges={TOKEN: ANSWER})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.loads(path.read_text())
    assert (body["full"], body["certificates"], body["challenges"]) == (True, {"shop.test": PEM}, {TOKEN: ANSWER})
    backends.write_table(path, 5, {})
    assert json.loads(path.read_text())["challenges"] == {} and json.loads(path.read_text())["certificates"] == {}
