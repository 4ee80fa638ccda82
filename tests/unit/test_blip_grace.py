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


# --- through the apply step, with a fake nginx (reload mode) -------------------------------

def routed(service, port, stable=True):
    return Route(service, f"/{service}/", "", Pool("v1", (("127.0.0.1", port),)) if stable else None)


def served(tmp_path, grace, *routes):
    """A runner in reload mode that serves `routes`; its mirror has not been disrupted yet."""
    from tests.support.fakes import FakeNginx
    nginx = FakeNginx(tmp_path)
    r = Runner(SimpleNamespace(disrupted_at=0.0), nginx, RunnerOptions(blip_grace=grace))
    compute(r, *routes)
    return r, nginx


def compute(r, *routes, invalid=None):
    r.computed, r.invalid = {x.service: x for x in routes}, dict(invalid or {})
    r._apply()


def upstream(conf, port):
    return f"server 127.0.0.1:{port} max_fails=0;" in conf


def test_a_service_that_vanishes_in_the_grace_is_served_until_the_grace_is_over(tmp_path):
    r, nginx = served(tmp_path, 0.5, routed("a", 1), routed("b", 2))
    r.mirror.disrupted_at = time.monotonic() - 0.2            # Consul came back 0.2 s ago
    compute(r, routed("a", 1))                                 # b not (yet) re-synced
    assert upstream(nginx.conf, 2) and set(r.status()["services"]) == {"a", "b"}
    assert r.status()["service_errors"] == {
        "b": "kept its last good route: Consul was unreachable or restarted moments ago"}
    assert r.recheck.daemon, "a planned apply never holds up proxy-reloader's exit"
    r.dirty.clear()
    started = time.monotonic()
    assert r.dirty.wait(2), "the runner applies again when the grace is over"
    assert 0.3 <= time.monotonic() - started <= 0.7           # at the grace's end (0.3 s left) and 0.1 s
    compute(r, routed("a", 1))
    assert not upstream(nginx.conf, 2) and set(r.status()["services"]) == {"a"}
    assert r.status()["service_errors"] == {}


def test_in_the_grace_other_changes_apply_at_once(tmp_path):
    r, nginx = served(tmp_path, 5, routed("a", 1), routed("b", 2))
    r.mirror.disrupted_at = time.monotonic()
    compute(r, routed("a", 3), routed("b", 2), routed("c", 4))
    assert upstream(nginx.conf, 3) and upstream(nginx.conf, 4) and not upstream(nginx.conf, 1)
    assert r.status()["service_errors"] == {} and r.recheck is None, "nothing kept: no later apply"


def test_in_the_grace_a_service_with_its_own_error_says_so(tmp_path):
    r, nginx = served(tmp_path, 5, routed("a", 1))
    r.mirror.disrupted_at = time.monotonic()
    compute(r, invalid={"a": "gatekeeper/policies/a: bad JSON"})
    assert r.status()["service_errors"] == {"a": "gatekeeper/policies/a: bad JSON"}
    assert upstream(nginx.conf, 1), "its last good route, for its own error"


def test_in_the_grace_a_route_that_answered_503_is_not_kept(tmp_path):
    r, nginx = served(tmp_path, 5, routed("a", 1), routed("b", 0, stable=False))
    assert "location /b/ {" in nginx.conf
    r.mirror.disrupted_at = time.monotonic()
    compute(r, routed("a", 1))
    assert "location /b/ {" not in nginx.conf and r.status()["service_errors"] == {}


def test_one_later_apply_is_planned_at_a_time():
    r = runner(disrupted_ago=1)
    r._recheck_after(5)
    first = r.recheck
    r._recheck_after(0)
    assert r.recheck is first and not r.dirty.is_set()
    first.cancel()
