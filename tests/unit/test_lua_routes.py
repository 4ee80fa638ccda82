"""The Lua router's choice of route (proxystack/routes.lua, run by luajit, no nginx needed):
host names as nginx picks server blocks (exact, then the longest wildcard, then the default
host, with no fallback from a named host to the default's routes), then the longest path prefix,
and a route's path without its final slash as a redirect. On a real nginx:
tests/integration/test_route_table.py. Also the canary split's hash and the latency histogram's
buckets (proxystack/latency.lua), the other pure parts of the per-request path."""
from __future__ import annotations

import bisect

from hypothesis import given, settings, strategies as st

from tests.support.lua import run_lua



def find(tmp_path, routes, requests):
    """routes: {service: (path, [hosts])} -> the Lua side's (service, path) per (host, uri)."""
    entries = {name: {"service": name, "route": {"path": path, "hosts": hosts}} for name, (path, hosts) in routes.items()}
    return [tuple(a) for a in run_lua("routes", {"entries": entries, "requests": requests}, tmp_path)]


ROUTES = {
    "root": ("/", []),
    "api": ("/api/", []),
    "api-v2": ("/api/v2/", []),
    "exact": ("/", ["shop.test"]),
    "exact-api": ("/api/", ["shop.test"]),
    "wild": ("/", ["*.shop.test"]),
    "deeper": ("/only/", ["*.eu.shop.test", "other.test"]),
    "a-first": ("/same/", []),
    "b-second": ("/same/", []),
}


def test_each_request_gets_the_route_nginx_would_choose(tmp_path):
    requests = [
        ("x.test", "/"), ("x.test", "/anything"), ("x.test", "/api/x"), ("x.test", "/api/v2/x"),
        ("x.test", "/api/v2"), ("x.test", "/api"), ("shop.test", "/api/x"), ("shop.test", "/x"),
        ("www.shop.test", "/api/x"), ("a.b.shop.test", "/"), ("x.eu.shop.test", "/only/1"),
        ("x.eu.shop.test", "/other"), ("other.test", "/only"), ("x.test", "/same/1"),
    ]
    assert find(tmp_path, ROUTES, requests) == [
        ("root", "/"), ("root", "/"), ("api", "/api/"), ("api-v2", "/api/v2/"),
        ("api", "/api/"), ("root", "/"), ("exact-api", "/api/"), ("exact", "/"),
        ("wild", "/"), ("wild", "/"), ("deeper", "/only/"),
        (None, None), (None, "/only/"), ("a-first", "/same/"),
    ]


def test_no_route_at_all_is_none(tmp_path):
    assert find(tmp_path, {"api": ("/api/", ["api.test"])}, [("api.test", "/"), ("x.test", "/api/")]) == \
        [(None, None), (None, None)]


SEGMENT = st.sampled_from(["a", "b", "c", "api", "v2"])


@settings(max_examples=25, deadline=None)
@given(paths=st.lists(st.lists(SEGMENT, max_size=3).map(lambda s: "/" + "".join(x + "/" for x in s)),
                      min_size=1, max_size=6, unique=True),
       uris=st.lists(st.lists(SEGMENT, max_size=4).map(lambda s: "/" + "/".join(s)), min_size=1, max_size=8))
def test_the_longest_matching_prefix_wins_whatever_the_routes(tmp_path_factory, paths, uris):
    routes = {f"s{i}": (p, []) for i, p in enumerate(paths)}
    got = find(tmp_path_factory.mktemp("prop"), routes, [("h.test", u) for u in uris])
    for uri, (name, path) in zip(uris, got):
        matching = [p for p in paths if uri.startswith(p)]
        if matching:
            best = max(matching, key=len)
            assert (name, path) == (f"s{paths.index(best)}", best)
        elif uri + "/" in paths:
            assert (name, path) == (None, uri + "/")
        else:
            assert (name, path) == (None, None)


def split_answers(tmp_path, keys, weight):
    return [(int(h), side) for h, side in run_lua("split", {"keys": keys, "weight": weight}, tmp_path)]


@settings(max_examples=20, deadline=None)
@given(keys=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), min_size=1,
                          max_size=50), weight=st.integers(0, 100))
def test_the_lua_split_hashes_each_client_key_as_nginxs_split_clients(tmp_path_factory, keys, weight):
    from testbed.split import in_split, murmur2
    got = split_answers(tmp_path_factory.mktemp("split"), keys, weight)
    assert got == [(murmur2(k.encode()), in_split(k, weight)) for k in keys]


@settings(max_examples=20, deadline=None)
@given(times=st.lists(st.one_of(st.floats(0, 30, allow_nan=False),
                                st.sampled_from([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])),
                      min_size=1, max_size=60))
def test_each_request_time_is_counted_in_the_first_bucket_whose_bound_it_does_not_exceed(tmp_path_factory, times):
    # what /metrics reports as proxystack_request_duration_seconds_bucket{le=...}, as Prometheus
    # defines `le`: a request of exactly 0.1 s is within le="0.1"
    got = run_lua("buckets", times, tmp_path_factory.mktemp("buckets"))
    bounds = got["bounds"]
    assert bounds == sorted(bounds) and len(bounds) == 11
    for took, index in zip(times, got["buckets"]):
        assert index == 1 + bisect.bisect_left(bounds, took), (took, index)
