"""The daemons' metrics endpoints: loopback only, refused clearly otherwise; Prometheus's
configuration finds them through Consul and holds no secret."""
import json

import pytest

from catalog.metrics import parse_metrics_address
from monitoring.config import render
from monitoring.targets import target_groups, write_if_changed
from catalog.validation import InvalidValue
from registrator.__main__ import parse_args as registrator_args


@pytest.mark.parametrize("good,expected", [("127.0.0.1:9101", ("127.0.0.1", 9101)),
                                            ("127.8.9.10:1", ("127.8.9.10", 1)), ("[::1]:65535", ("::1", 65535))])
def test_a_loopback_address_is_accepted(good, expected):
    assert parse_metrics_address(good) == expected


@pytest.mark.parametrize("bad", ["0.0.0.0:9101", "192.0.2.3:9101", "9101", "127.0.0.1:0", "127.0.0.1:65536",
                                 "127.0.0.1:x", "localhost:9101", ":9101"])
def test_anything_else_is_refused_naming_the_option_and_the_rule(bad):
    with pytest.raises(InvalidValue, match=r"--metrics.*loopback HOST:PORT"):
        parse_metrics_address(bad)


def test_the_daemons_refuse_a_bad_metrics_address_at_start(capsys):
    with pytest.raises(SystemExit) as exit_:
        registrator_args(["--metrics", "0.0.0.0:9101"])
    assert exit_.value.code == 2 and "loopback" in capsys.readouterr().err


def test_prometheus_reads_its_targets_from_the_watchers_file():
    config = json.loads(render("/s/targets.json", rules="/r.yml", interval="2s", listen="127.0.0.1:9090"))
    stack, itself = config["scrape_configs"]
    assert stack["file_sd_configs"][0]["files"] == ["/s/targets.json"]
    assert itself["static_configs"] == [{"targets": ["127.0.0.1:9090"]}]
    assert config["rule_files"] == ["/r.yml"] and config["global"]["scrape_interval"] == "2s"


# 192.0.2.0/24 (documentation addresses) stand for "not loopback" and a remote node; nothing
# is ever sent to them.
def entry(sid, component, address, port, node="n1"):
    return {"Node": {"Node": node, "Address": "192.0.2.9"},
            "Service": {"ID": sid, "Address": address, "Port": port, "Meta": {"component": component} if component else {}}}


def test_each_announced_endpoint_is_a_target_labelled_with_its_component():
    groups = target_groups([entry("b", "registrator", "127.0.0.1", 8002), entry("a", "gatekeeper", "127.0.0.1", 8003),
                            entry("c", "", "", 8004, node="n2"), entry("d", "x", "127.0.0.1", 0)])
    assert groups == [
        {"targets": ["127.0.0.1:8003"], "labels": {"job": "gatekeeper", "node": "n1", "consul_service_id": "a"}},
        {"targets": ["127.0.0.1:8002"], "labels": {"job": "registrator", "node": "n1", "consul_service_id": "b"}},
        # no service address: the node's, as Consul means it; no component: said so
        {"targets": ["192.0.2.9:8004"], "labels": {"job": "unknown", "node": "n2", "consul_service_id": "c"}},
    ]


def test_the_file_is_rewritten_only_when_it_changes(tmp_path):
    out = tmp_path / "targets.json"
    groups = target_groups([entry("a", "gatekeeper", "127.0.0.1", 8003)])
    assert write_if_changed(out, groups) is True
    assert json.loads(out.read_text()) == groups
    assert write_if_changed(out, groups) is False
    assert write_if_changed(out, []) is True and json.loads(out.read_text()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]
