"""proxy-reloader rides out a Consul blip (real-parts twin: tests/e2e/test_proxy_reloader.py,
test_consul_down_for_10_seconds_traffic_continues)."""
import time
from types import SimpleNamespace

from catalog.routing import Pool, Route
from proxy_reloader.runner import Runner, RunnerOptions

GOOD = Route("demo", "/demo/", "", Pool("v1", (("127.0.0.1", 1),)))


def runner(disrupted_ago):
    mirror = SimpleNamespace(disrupted_at=time.monotonic() - disrupted_ago if disrupted_ago is not None else 0.0)
    r = Runner(mirror, nginx=SimpleNamespace(prefix="/p"), options=RunnerOptions(blip_grace=5))
    r.last_good = {"demo": GOOD}
    return r


def test_right_after_a_disruption_a_vanished_service_keeps_its_route():
    r = runner(disrupted_ago=1)
    routes, errors = r._ride_out_blips([], {})
    assert routes == [] and "demo" in errors and r._kept(routes, errors) == [GOOD]
    r.recheck.cancel()


def test_a_service_that_lost_every_admitted_instance_is_kept_too():
    r = runner(disrupted_ago=1)
    routes, errors = r._ride_out_blips([Route("demo", "/demo/", "", None)], {})
    assert r._kept(routes, errors) == [GOOD]
    r.recheck.cancel()


def test_without_a_recent_disruption_removals_apply_at_once():
    for ago in (None, 6):
        routes, errors = runner(ago)._ride_out_blips([], {})
        assert errors == {}
