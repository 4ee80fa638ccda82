"""The push contract is one file (proxy_reloader/lua/proxystack/contract.json) and both sides
keep it: the same push bodies go through proxy_reloader.contract and through nginx's
proxystack/contract.lua (run by luajit, no nginx needed), and every answer, reason included, is
the same. The contract's name rules are catalog.validation's, so nothing proxy-reloader admits
is refused by nginx and nothing nginx would take escapes validation. Pushes into a real nginx:
tests/integration/test_push_endpoint.py."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from tests.support.lua import run_lua

from catalog import validation
from proxy_reloader import backends, contract



def push(services, generation=5):
    return json.dumps({"generation": generation, "full": False, "services": services})


def entry(name="demo", stable=None, canary=None, weight=0, **extra):
    e = {"service": name, "stable": stable, "canary": canary, "weight": weight}
    e.update(extra)
    return e


POOL = {"version": "v1", "servers": [["127.0.0.1", 8080, "v1"]]}
ROUTE = {"path": "/demo/", "hosts": [], "strip_prefix": False}
FULL_ROUTE = {"path": "/api/v1/", "hosts": ["demo.test", "*.demo.test"], "strip_prefix": True, "timeout": 0.5,
              "connect_timeout": 1, "body_size": 10485760, "buffering": False, "retries": 0,
              "rate_limit": {"rate": 50, "burst": 100},
              "allow": ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128", "fe80::/10", "0.0.0.0/0"]}
RATE_RULE = "demo.route.rate_limit must be {rate: 0.01..1000000, burst: 0..1000000}"
MIXED = {"version": "*", "servers": [["127.0.0.7", 1, "v1"], ["host-a.example", 65535, "v2.1_rc-3"]]}

CERT = {"cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"}


def certs(certificates, generation=5):
    return json.dumps({"generation": generation, "full": False, "services": {}, "certificates": certificates})


# (push body as JSON text, the reason it is refused or None)
CASES = [
    (push({"demo": entry(stable=POOL)}), None),
    (push({"demo": entry(stable=POOL, canary=MIXED, weight=100)}), None),
    (push({"demo": None, "a": entry("a", stable=POOL)}), None),
    (push({"demo": entry()}), None),                                       # nothing admitted: 503
    (push({}), None),
    (push({"demo": entry(stable=POOL, weight=10.0)}), None),              # JSON has numbers, not ints
    (push({"d" * 63: entry("d" * 63, stable=POOL)}), None),
    (json.dumps([1, 2]), "body must be a JSON object"),
    (push({"demo": [entry()]}), "demo: entry must be an object or null"),
    (push({"demo": entry(stable=[POOL])}), "demo.stable must be an object or null"),
    (json.dumps("text"), "body must be a JSON object"),
    (push({}, generation=0), "generation must be a positive integer"),
    (push({}, generation=1.5), "generation must be a positive integer"),
    (push({}, generation="7"), "generation must be a positive integer"),
    (json.dumps({"generation": 3, "services": 4}), "services must be an object"),
    (json.dumps({"generation": 3}), "services must be an object"),
    (push({"Demo": entry("Demo")}), "service name Demo is not valid"),
    (push({"demo-": entry("demo-")}), "service name demo- is not valid"),
    (push({"de_mo": entry("de_mo")}), "service name de_mo is not valid"),
    (push({"d" * 64: entry("d" * 64)}), f"service name {'d' * 64} is not valid"),
    (push({"demo": 7}), "demo: entry must be an object or null"),
    (push({"demo": entry("other")}), "demo: entry.service must be demo"),
    (push({"demo": entry(stable={"version": "v 1", "servers": POOL["servers"]})}),
     "demo.stable.version is not a valid version"),
    (push({"demo": entry(stable={"version": "v" * 65, "servers": POOL["servers"]})}),
     "demo.stable.version is not a valid version"),
    (push({"demo": entry(stable={"version": "v1", "servers": []})}), "demo.stable.servers must list 1 to 4096 servers"),
    (push({"demo": entry(stable={"version": "v1", "servers": [["127.0.0.1", 80, "v1"]] * 4097})}),
     "demo.stable.servers must list 1 to 4096 servers"),
    (push({"demo": entry(stable={"version": "v1", "servers": [["Host.example", 80, "v1"]]})}),
     "demo.stable.servers[1] must be [address, port, version]"),
    (push({"demo": entry(stable={"version": "v1", "servers": [["127.0.0.1", 80, "v1"], ["127.0.0.1", 0, "v1"]]})}),
     "demo.stable.servers[2] must be [address, port, version]"),
    (push({"demo": entry(stable={"version": "v1", "servers": [["127.0.0.1", 80, "v1", "x"]]})}),
     "demo.stable.servers[1] must be [address, port, version]"),
    (push({"demo": entry(stable={"version": "v1", "servers": [["127.0.0.1", "80", "v1"]]})}),
     "demo.stable.servers[1] must be [address, port, version]"),
    (push({"demo": entry(stable={"version": "v1", "servers": [["127.0.0.1;", 80, "v1"]]})}),
     "demo.stable.servers[1] must be [address, port, version]"),
    (push({"demo": entry(stable=POOL, canary="v2")}), "demo.canary must be an object or null"),
    (push({"demo": entry(stable=POOL, weight=101)}), "demo.weight must be an integer 0..100"),
    (push({"demo": entry(stable=POOL, weight=-1)}), "demo.weight must be an integer 0..100"),
    (push({"demo": entry(stable=POOL, weight=True)}), "demo.weight must be an integer 0..100"),
    (push({"demo": entry(canary=POOL, weight=5)}), "demo: a canary needs a stable pool"),
    (push({"a": entry("a", stable=POOL), "b": entry("b", weight=500)}), "b.weight must be an integer 0..100"),
    # the route and its settings
    (push({"demo": entry(stable=POOL, route=ROUTE)}), None),
    (push({"demo": entry(stable=POOL, route=FULL_ROUTE)}), None),
    (push({"demo": entry(route={"path": "/"})}), None),
    (push({"demo": entry(stable=POOL, route="/demo/")}), "demo.route must be an object"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "gzip": True})}), "demo.route.gzip is not a route setting"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "path": "/demo"})}),
     "demo.route.path must be a path of plain segments ending in /"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "path": "/a//b/"})}),
     "demo.route.path must be a path of plain segments ending in /"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "path": "/a b/"})}),
     "demo.route.path must be a path of plain segments ending in /"),
    (push({"demo": entry(stable=POOL, route={"hosts": []})}),
     "demo.route.path must be a path of plain segments ending in /"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "hosts": ["Demo.test"]})}),
     "demo.route.hosts must list 0 to 16 host names"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "hosts": ["*"]})}),
     "demo.route.hosts must list 0 to 16 host names"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "hosts": ["a.*.test"]})}),
     "demo.route.hosts must list 0 to 16 host names"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "hosts": [f"h{i}.test" for i in range(17)]})}),
     "demo.route.hosts must list 0 to 16 host names"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "hosts": "demo.test"})}),
     "demo.route.hosts must list 0 to 16 host names"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "strip_prefix": 1})}),
     "demo.route.strip_prefix must be true or false"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "buffering": "off"})}),
     "demo.route.buffering must be true or false"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "timeout": 0})}), "demo.route.timeout must be a number 0.01..3600"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "timeout": "5s"})}),
     "demo.route.timeout must be a number 0.01..3600"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "connect_timeout": 61})}),
     "demo.route.connect_timeout must be a number 0.01..60"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "body_size": 1.5})}),
     "demo.route.body_size must be a number 1..1073741824"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "body_size": 2 ** 31})}),
     "demo.route.body_size must be a number 1..1073741824"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "retries": 11})}), "demo.route.retries must be a number 0..10"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "retries": True})}), "demo.route.retries must be a number 0..10"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": []})}), "demo.route.allow must list 1 to 32 networks"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "rate_limit": {"rate": 0.5, "burst": 0}})}), None),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "rate_limit": {"rate": 0, "burst": 1}})}), RATE_RULE),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "rate_limit": {"rate": 5, "burst": 1.5}})}), RATE_RULE),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "rate_limit": {"rate": 5}})}), RATE_RULE),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "rate_limit": {"rate": 5, "burst": 1, "x": 1}})}), RATE_RULE),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "rate_limit": "5r/s"})}), RATE_RULE),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "protocol": "grpc"})}), None),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "protocol": "h2"})}), "demo.route.protocol must be one of http, grpc"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "protocol": True})}),
     "demo.route.protocol must be one of http, grpc"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": "10.0.0.0/8"})}),
     "demo.route.allow must list 1 to 32 networks"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["10.0.0.0/8"] * 33})}),
     "demo.route.allow must list 1 to 32 networks"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["10.0.0.0/8", "10.0.0.1/8"]})}),
     "demo.route.allow[2] is not an address or network"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["256.0.0.1"]})}),
     "demo.route.allow[1] is not an address or network"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["10.0.0.0/33"]})}),
     "demo.route.allow[1] is not an address or network"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["2001:db8::1/32"]})}),
     "demo.route.allow[1] is not an address or network"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["1:2:3:4:5:6:7:8:9"]})}),
     "demo.route.allow[1] is not an address or network"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["::ffff:1.2.3.4"]})}),
     "demo.route.allow[1] is not an address or network"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "allow": ["10.0.0.0/8 "]})}),
     "demo.route.allow[1] is not an address or network"),
    # HTTPS: how a route is served over each scheme, and the certificates pushed beside the routes
    (push({"demo": entry(stable=POOL, route={**ROUTE, "https": "redirect", "hsts_max_age": 31536000,
                                             "hsts_subdomains": True})}), None),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "https": "always"})}),
     "demo.route.https must be one of redirect, only, both, off"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "hsts_max_age": 63072001})}),
     "demo.route.hsts_max_age must be a number 0..63072000"),
    (push({"demo": entry(stable=POOL, route={**ROUTE, "hsts_subdomains": "yes"})}),
     "demo.route.hsts_subdomains must be true or false"),
    (certs({"demo.test": CERT, "*.demo.test": CERT, "default": CERT, "gone.test": None}), None),
    (certs({}), None),
    (certs({"Demo.test": CERT}), "certificate name Demo.test is not valid"),
    (certs({"*": CERT}), "certificate name * is not valid"),
    (certs({"demo.test": {"cert": CERT["cert"]}}), "certificate demo.test must be {cert, key} or null"),
    (certs({"demo.test": {**CERT, "chain": "x"}}), "certificate demo.test must be {cert, key} or null"),
    (certs({"demo.test": [CERT]}), "certificate demo.test must be {cert, key} or null"),
    (certs({"demo.test": {**CERT, "key": "secret"}}),
     "certificate demo.test: key must be PEM text of at most 65536 bytes"),
    (certs({"demo.test": {**CERT, "cert": "-----BEGIN " + "A" * 65536}}),
     "certificate demo.test: cert must be PEM text of at most 65536 bytes"),
    (json.dumps({"generation": 5, "services": {}, "certificates": [CERT]}),
     "certificates must be an object of at most 10000"),
    (json.dumps({"generation": 5, "services": {}, "certificates": None}),
     "certificates must be an object of at most 10000"),
    # ACME HTTP-01 answers
    (json.dumps({"generation": 5, "services": {}, "challenges": {"tok-EN_1": "tok-EN_1.thumb_PRINT-2", "old": None}}),
     None),
    (json.dumps({"generation": 5, "services": {}, "challenges": {"a/b": "x.y"}}),
     "challenge a/b: must be TOKEN: KEY_AUTHORIZATION or null"),
    (json.dumps({"generation": 5, "services": {}, "challenges": {"tok": "tok.<script>"}}),
     "challenge tok: must be TOKEN: KEY_AUTHORIZATION or null"),
    (json.dumps({"generation": 5, "services": {}, "challenges": ["tok"]}),
     "challenges must be an object of at most 1000"),
]


def python_answers():
    return [list(contract.check_push(json.loads(text))) for text, _ in CASES]


def lua_answers(tmp_path):
    return [[a["ok"], a["reason"]] for a in run_lua("pushes", [text for text, _ in CASES], tmp_path)]


def expected():
    return [[reason is None, reason] for _, reason in CASES]


def test_the_python_side_answers_each_push_as_the_contract_says():
    assert python_answers() == expected()


def test_the_lua_side_answers_each_push_as_the_python_side_does(tmp_path):
    assert lua_answers(tmp_path) == expected()


def test_proxy_reloader_refuses_before_sending_what_nginx_would_refuse():
    bad = {"service": "demo", "stable": {"version": "v1", "servers": [["127.0.0.1", 0, "v1"]]}, "canary": None,
           "weight": 0}
    with pytest.raises(ValueError, match=r"demo.stable.servers\[1\] must be"):
        backends.push_body(3, {"demo": bad}, full=False)


NAME_CHARS = "aAzZ09-._:; /é\x00"


@settings(max_examples=400)
@given(st.sampled_from(["service", "version", "address"]),
       st.text(alphabet=NAME_CHARS, max_size=6) | st.text(alphabet="ab9-.", min_size=60, max_size=260))
def test_the_contracts_name_rules_are_catalog_validations(kind, value):
    assert contract.name_ok(kind, value) == validation.valid(kind, value), (kind, value)
