import pytest

from registrator.docker_source import Container, PublishedPort
from catalog.stores.instances import instance_from_consul
from catalog.images import image_version
from registrator.translate import Rejected, Settings, Skipped, instances_for

S = Settings(hostname="host1", registered_by="registrator@host1")


def container(labels=None, env=None, ports=((8080, 32768),), image="demo:v2", name="web1", running=True):
    return Container(id="c" * 64, name=name, image=image, running=running, labels=dict(labels or {}),
                     env=dict(env or {}),
                     ports=tuple(PublishedPort(cp, "tcp", "127.0.0.1", hp) for cp, hp in ports))


def test_one_instance_per_published_port_with_gate_metadata():
    [inst] = instances_for(container({"SERVICE_NAME": "demo", "gatekeeper.tests": "demo-test:latest"}), S)
    assert inst.id == "host1:web1:8080"
    assert (inst.service, inst.address, inst.port, inst.version) == ("demo", "127.0.0.1", 32768, "v2")
    assert inst.tests_image == "demo-test:latest"
    assert inst.gate_check_id == "host1:web1:8080:gate"
    assert inst.meta()["container_id"] == "c" * 64 and inst.meta()["proxy_path"] == "/demo/"
    assert "version=v2" in inst.all_tags()


def test_environment_works_like_labels_and_labels_win():
    [inst] = instances_for(container({"SERVICE_NAME": "fromlabel"}, env={"SERVICE_NAME": "fromenv", "SERVICE_TAGS": "a,b"}), S)
    assert inst.service == "fromlabel" and inst.tags == ("a", "b")


def test_version_label_overrides_image_tag():
    [inst] = instances_for(container({"SERVICE_NAME": "demo", "gatekeeper.version": "2024.1"}), S)
    assert inst.version == "2024.1"
    assert image_version("registry:5000/x/demo") == "latest"
    assert image_version("registry:5000/x/demo:v9") == "v9"


def test_several_ports_are_named_per_port_unless_named_explicitly():
    c = container({"SERVICE_NAME": "app", "SERVICE_9090_NAME": "metrics"}, ports=((8080, 1), (9090, 2), (7000, 3)))
    names = sorted(i.service for i in instances_for(c, S))
    assert names == ["app-7000", "app-8080", "metrics"]


def test_ignore_and_explicit_skip_with_a_reason():
    for value in ("1", "false", "no"):           # registrator: any non-empty value ignores
        with pytest.raises(Skipped, match=f"SERVICE_IGNORE is set \\(to '{value}'"):
            instances_for(container({"SERVICE_NAME": "demo", "SERVICE_IGNORE": value}), S)
    with pytest.raises(Skipped, match="no SERVICE_NAME and registrator runs with --explicit"):
        instances_for(container({"proxy.path": "/a b/"}), Settings(hostname="h", explicit=True))
    assert instances_for(container({"SERVICE_NAME": "demo", "SERVICE_IGNORE": ""}), S) != []


def test_filter_and_exclude():
    assert instances_for(container({"SERVICE_NAME": "demo", "SERVICE_8080_IGNORE": "1"}), S) == []
    assert [i.service for i in instances_for(container({}), S)] == ["demo"]   # image name
    assert instances_for(container({"SERVICE_NAME": "demo"}), Settings(hostname="h", filter_label="team=x")) == []
    assert instances_for(container({"SERVICE_NAME": "demo", "proxystack.test": "1"}),
                         Settings(hostname="h", exclude_labels=("proxystack.test",))) == []
    assert instances_for(container({"SERVICE_NAME": "demo"}, ports=()), S) == []
    assert instances_for(container({"SERVICE_NAME": "demo"}, running=False), S) == []


def test_other_service_keys_become_metadata_but_never_secrets():
    [inst] = instances_for(container({"SERVICE_NAME": "demo", "SERVICE_REGION": "eu-1"},
                                     env={"SERVICE_DB_PASSWORD": "hunter2", "SERVICE_API_TOKEN": "t"}), S)
    meta = inst.meta()
    assert meta["region"] == "eu-1"
    assert "hunter2" not in str(meta) and "db_password" not in meta and "api_token" not in meta


@pytest.mark.parametrize("labels,label", [
    ({"SERVICE_NAME": "Bad_Name"}, "SERVICE_NAME"),
    ({"SERVICE_NAME": "demo", "proxy.path": "/a b/"}, "proxy.path"),
    ({"SERVICE_NAME": "demo", "proxy.path": "/x/;return 200/"}, "proxy.path"),
    ({"SERVICE_NAME": "demo", "proxy.host": "a}b"}, "proxy.host"),
    ({"SERVICE_NAME": "demo", "gatekeeper.version": "v1\nx"}, "gatekeeper.version"),
    ({"SERVICE_NAME": "demo", "SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "often"}, "SERVICE_CHECK_INTERVAL"),
    ({"SERVICE_NAME": "demo", "SERVICE_TAGS": "ok,b$d"}, "SERVICE_TAGS"),
])
def test_invalid_values_reject_the_container_naming_container_label_and_rule(labels, label):
    with pytest.raises(Rejected) as err:
        instances_for(container(labels), S)
    text = str(err.value)
    assert "web1" in text and label in text and "must be" in text


def test_tcp_check_and_docker_healthcheck_are_carried():
    c = Container(id="c" * 64, name="web1", image="demo:v1", running=True, labels={"SERVICE_NAME": "demo",
                  "SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_INTERVAL": "2s"},
                  ports=(PublishedPort(8080, "tcp", "127.0.0.1", 1),), health="starting")
    [inst] = instances_for(c, S)
    assert inst.health_check.kind == "tcp" and inst.health_check.interval == "2s"
    assert inst.docker_health and inst.meta()["docker_health"] == "1"


def test_internal_mode_registers_the_container_address_and_exposed_ports():
    c = Container(id="c" * 64, name="web1", image="demo:v1", running=True, labels={"SERVICE_NAME": "demo"},
                  exposed=(8080,), internal_ip="192.0.2.7")
    assert instances_for(c, S) == []                       # nothing published
    [inst] = instances_for(c, Settings(hostname="h", internal=True))
    assert (inst.address, inst.port) == ("192.0.2.7", 8080)


def test_a_label_for_a_port_the_container_does_not_publish_rejects_it():
    with pytest.raises(Rejected) as err:
        instances_for(container({"SERVICE_NAME": "demo", "SERVICE_9999_NAME": "metrics"}), S)
    assert "SERVICE_9999_NAME" in str(err.value) and "not published" in str(err.value)


def test_a_container_with_a_name_but_no_port_is_logged(caplog):
    caplog.set_level("INFO")
    assert instances_for(container({"SERVICE_NAME": "demo"}, ports=()), S) == []
    assert "web1" in caplog.text and "no published port" in caplog.text


def test_strip_prefix_is_a_validated_flag_off_by_default():
    assert instances_for(container({"SERVICE_NAME": "demo"}), S)[0].strip_prefix is False
    assert instances_for(container({"SERVICE_NAME": "demo", "proxy.strip_prefix": "true"}), S)[0].strip_prefix
    with pytest.raises(Rejected, match="proxy.strip_prefix.*true or false"):
        instances_for(container({"SERVICE_NAME": "demo", "proxy.strip_prefix": "yes please"}), S)


def test_health_checks_in_full():
    from catalog.model import HealthCheck
    one = lambda labels: instances_for(container({"SERVICE_NAME": "demo", **labels}), S)[0].health_check
    assert one({}) is None
    assert one({"SERVICE_CHECK_HTTP": "/health"}) == HealthCheck("http", "/health", "5s", "2s")
    assert one({"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_INTERVAL": "10s", "SERVICE_CHECK_TIMEOUT": "500ms"}) == \
        HealthCheck("http", "/h", "10s", "500ms")
    for yes in ("true", "TRUE", "1", "yes"):
        assert one({"SERVICE_CHECK_TCP": yes}) == HealthCheck("tcp", "", "5s", "2s")
    assert one({"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TCP": "true"}).kind == "http", "HTTP wins"
    with pytest.raises(Rejected) as err:
        instances_for(container({"SERVICE_NAME": "demo", "SERVICE_CHECK_TCP": "no"}), S)
    assert str(err.value).endswith("label SERVICE_CHECK_TCP: 'no' must be true (connect to the instance's port)")
    with pytest.raises(Rejected) as err:
        instances_for(container({"SERVICE_NAME": "demo", "SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_TIMEOUT": "2"}), S)
    assert err.value.label == "SERVICE_CHECK_TIMEOUT" and "such as 5s" in err.value.reason
    with pytest.raises(Rejected) as err:
        instances_for(container({"SERVICE_NAME": "demo", "SERVICE_CHECK_HTTP": "health"}), S)
    assert err.value.label == "SERVICE_CHECK_HTTP"


def test_the_promotion_mode_and_analysis_labels_are_validated_and_carried_to_consul():
    [i] = instances_for(container({"SERVICE_NAME": "demo", "gatekeeper.mode": "progressive",
                                   "gatekeeper.analysis": " step=20, interval=5 ,p99_ms=800"}), S)
    assert (i.mode, i.analysis) == ("progressive", "interval=5.0,p99_ms=800.0,step=20")
    assert i.meta()["promotion_mode"] == "progressive" and i.meta()["analysis"] == i.analysis
    assert instance_from_consul({"ID": i.id, "Service": i.service, "Address": i.address, "Port": i.port,
                                 "Tags": list(i.all_tags()), "Meta": i.meta()}) == i
    for labels, field in (({"gatekeeper.mode": "gradual"}, "gatekeeper.mode"),
                          ({"gatekeeper.analysis": "step=0"}, "analysis.step"),
                          ({"gatekeeper.analysis": "steps=10"}, "gatekeeper.analysis"),
                          ({"gatekeeper.analysis": "interval=soon"}, "analysis.interval")):
        with pytest.raises(Rejected) as err:
            instances_for(container({"SERVICE_NAME": "demo", **labels}), S)
        assert field in str(err.value)


def _swarm_inspect(health_test=None, image="demo:v2@sha256:" + "a" * 64):
    return {"Id": "d" * 64, "Name": "/demo.2.x1y2z3",
            "Config": {"Image": image, "Labels": {"com.docker.swarm.service.name": "shop",
                                                   "com.docker.swarm.task.id": "x1y2z3"},
                       "Healthcheck": {"Test": health_test} if health_test else None},
            "State": {"Running": True, "Health": {"Status": "starting"}},
            "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32770"}]}}}


def test_a_swarm_task_is_named_after_its_service_and_carries_its_task():
    from registrator.docker_source import container_from_inspect
    [inst] = instances_for(container_from_inspect(_swarm_inspect()), S)
    assert (inst.service, inst.version, inst.id) == ("shop", "v2", "host1:demo.2.x1y2z3:8080")
    back = instance_from_consul({"ID": inst.id, "Service": inst.service, "Address": inst.address,
                                 "Port": inst.port, "Tags": inst.all_tags(), "Meta": inst.meta()})
    assert (back.swarm_service, back.swarm_task) == ("shop", "x1y2z3")
    assert not back.gate_mirror and not back.docker_health


def test_a_healthcheck_that_reads_the_gate_marker_is_not_the_apps_health():
    from catalog.model import GATE_MIRROR_HEALTH_CMD
    from registrator.docker_source import container_from_inspect
    mirror = container_from_inspect(_swarm_inspect(["CMD-SHELL", GATE_MIRROR_HEALTH_CMD]))
    assert mirror.gate_mirror and mirror.health is None      # never waits for itself to be healthy
    [inst] = instances_for(mirror, S)
    assert inst.gate_mirror and not inst.docker_health
    own = container_from_inspect(_swarm_inspect(["CMD", "curl", "-f", "localhost:8080/health"]))
    assert not own.gate_mirror and own.health == "starting"


def test_a_swarm_task_without_a_published_port_is_told_about_host_mode(caplog):
    import logging
    from registrator.docker_source import container_from_inspect
    data = _swarm_inspect()
    data["NetworkSettings"]["Ports"] = {}
    data["Config"]["Labels"]["SERVICE_NAME"] = "shop"
    with caplog.at_level(logging.INFO):
        assert instances_for(container_from_inspect(data), S) == []
    assert "mode=host" in caplog.text


def test_the_restart_policy_reaches_consul_for_the_healer_on_any_host():
    from dataclasses import replace
    from registrator.docker_source import container_from_inspect
    for policy, carried in (("unless-stopped", "unless-stopped"), ("on-failure", "on-failure"), ("no", ""), (None, "")):
        data = _swarm_inspect()
        if policy is not None:
            data["HostConfig"] = {"RestartPolicy": {"Name": policy, "MaximumRetryCount": 0}}
        [inst] = instances_for(replace(container_from_inspect(data), swarm_service="", swarm_task=""), S)
        back = instance_from_consul({"ID": inst.id, "Service": inst.service, "Address": inst.address,
                                     "Port": inst.port, "Tags": inst.all_tags(), "Meta": inst.meta()})
        assert back.restart_policy == carried and back == inst, policy
        assert ("restart_policy" in inst.meta()) == bool(carried)


@pytest.mark.parametrize("key, value, says", [
    ("SERVICE_ID", "myid", "SERVICE_ID: is not supported: an instance's id is HOST:CONTAINER:PORT"),
    ("SERVICE_CHECK_SCRIPT", "curl localhost", "SERVICE_CHECK_SCRIPT: is not supported (script checks): a health "
                                               "check is SERVICE_CHECK_HTTP=/path or SERVICE_CHECK_TCP=true"),
    ("SERVICE_CHECK_TTL", "30s", "is not supported (ttl checks)"),
    ("SERVICE_CHECK_HTTPS", "/health", "is not supported (https checks)"),
    ("SERVICE_CHECK_INITIAL_STATUS", "passing", "is not supported (initial_status checks)"),
    ("SERVICE_8080_TAGS", "a,b", "SERVICE_8080_TAGS: is not supported per port: only SERVICE_<port>_NAME and "
                                 "SERVICE_<port>_IGNORE are; SERVICE_TAGS applies to every port"),
    ("SERVICE_8080_CHECK_HTTP", "/health", "is not supported per port"),
])
@pytest.mark.parametrize("where", ["labels", "env"])
def test_registrators_forms_this_stack_does_not_take_refuse_the_container_never_become_metadata(key, value, says,
                                                                                               where):
    c = container({"SERVICE_NAME": "demo", **({key: value} if where == "labels" else {})},
                  env={key: value} if where == "env" else None)
    with pytest.raises(Rejected) as err:
        instances_for(c, S)
    assert err.value.label == key and err.value.service == "demo"
    assert says in str(err.value)


def test_our_labels_are_taken_from_the_environment_too_and_labels_win():
    [inst] = instances_for(container({"SERVICE_NAME": "demo", "proxy.path": "/fromlabel/"},
                                     env={"proxy.path": "/fromenv/", "gatekeeper.tests": "demo-test:latest",
                                          "proxy.timeout": "5s"}), S)
    assert inst.proxy_path == "/fromlabel/" and inst.tests_image == "demo-test:latest"
    assert inst.meta()["proxy_timeout"] == "5s"


def test_a_udp_port_is_registered_marked_as_registrator_marks_it_and_never_proxied():
    from catalog.model import RegisteredInstance
    from catalog.routing import route_for
    from proxy_reloader.view import route_of
    c = container({"SERVICE_NAME": "dns"})
    c = Container(**{**c.__dict__, "ports": (PublishedPort(53, "tcp", "127.0.0.1", 1053),
                                             PublishedPort(53, "udp", "127.0.0.1", 1053))})
    tcp, udp = instances_for(c, S)
    assert (tcp.id, udp.id) == ("host1:web1:53", "host1:web1:53:udp"), "one id each: both are container port 53"
    assert "udp" in udp.all_tags() and "udp" not in tcp.all_tags() and udp.udp and not tcp.udp
    assert instance_from_consul({"ID": udp.id, "Service": udp.service, "Address": udp.address, "Port": udp.port,
                                 "Tags": udp.all_tags(), "Meta": udp.meta()}).udp, "the mark survives Consul"
    both = [RegisteredInstance(i, {i.gate_check_id: "passing"}) for i in (tcp, udp)]
    assert route_for("dns", both, None).stable.servers == (("127.0.0.1", 1053),), "the TCP port only"
    assert route_of("dns", both[1:], None) == (None, None), "a UDP-only service gets no HTTP route"
    assert "not proxied" in route_for("dns", both[1:], None).note
