"""Twenty Consul client agents standing for twenty hosts (testbed/consul_fleet.py): instances
registered through each as its registrator would, churned while one catalog mirror per agent
(proxy-reloader's) follows. Every change reaches every proxy and none is lost; how fast, and
at 5,000 instances, is bench/fleet_bench.py's."""
import time

import pytest

from testbed.consul_fleet import Fleet, churn

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"), agents=20)
    try:
        yield f.start()
    finally:
        f.stop()


def test_every_change_reaches_every_proxy_of_20_hosts_and_they_end_equal_to_the_catalog(fleet):
    live = fleet.populate(services=20, per_service=25)
    fleet.follow()
    for seen in fleet.seen:
        assert set(live) <= set(seen), "each proxy starts with every admitted instance"
    changes = churn(fleet, live, rate=5, seconds=12)
    deadline = time.monotonic() + 60
    def arrived():
        return all(new in seen and old in gone for new, _, old, _ in changes
                   for seen, gone in zip(fleet.seen, fleet.gone_seen))
    while not arrived() and time.monotonic() < deadline:
        time.sleep(0.2)
    missing = [(i, new) for new, _, old, _ in changes for i, (seen, gone) in enumerate(zip(fleet.seen, fleet.gone_seen))
               if new not in seen or old not in gone]
    assert len(changes) >= 20 and not missing, f"{len(missing)} arrivals or departures missing: {missing[:5]}"
    catalog = {s: {ri.instance.id for ri in fleet.stores(0).instances.of(s) if ri.admitted} for s in {i.service for _, i in live.values()}}
    assert set().union(*catalog.values()) == set(live), "the catalog holds exactly the live instances"
    for i in range(fleet.n):
        routed = fleet.admitted(i)
        assert {s: routed.get(s, set()) for s in catalog} == catalog, f"proxy {i} differs from the catalog"
