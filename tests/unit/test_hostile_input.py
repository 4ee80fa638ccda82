"""Property-based: hostile strings never reach Consul or a rendered nginx file."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.model import Instance, RegisteredInstance
from catalog.routing import route_for
from proxy_reloader.render import render
from proxy_reloader.view import build_view
from registrator.docker_source import Container, PublishedPort
from registrator.translate import Rejected, Settings, Skipped, instances_for

DANGEROUS = set(" ;{}#'\"$\\\r\n\x00`")
hostile = st.text(alphabet=st.sampled_from(list("ab/.-_:=,9") + sorted(DANGEROUS) + ["é", "\t", "%"]),
                  min_size=0, max_size=40)
LABEL_KEYS = ["SERVICE_NAME", "proxy.path", "proxy.host", "gatekeeper.version", "gatekeeper.tests",
              "SERVICE_TAGS", "SERVICE_REGION", "SERVICE_CHECK_HTTP", "SERVICE_CHECK_INTERVAL"]


def instance_strings(inst: Instance):
    yield from (inst.service, inst.address, inst.version, inst.image, inst.tests_image, inst.proxy_path,
                inst.proxy_host, inst.container_name, *inst.tags)
    for k, v in inst.meta().items():
        yield k
        yield v


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(LABEL_KEYS), hostile, min_size=1))
def test_hostile_labels_are_rejected_or_come_out_clean(labels):
    c = Container(id="c" * 64, name="web1", image="demo:v1", running=True, labels=labels,
                  ports=(PublishedPort(8080, "tcp", "127.0.0.1", 32768),))
    try:
        instances = instances_for(c, Settings(hostname="h"))
    except Rejected as exc:
        assert exc.label and exc.reason
        return
    except Skipped as exc:
        assert exc.reason
        return
    for inst in instances:
        for value in instance_strings(inst):
            assert not DANGEROUS & set(value.replace(" ", "")) , value
        text = render([route_for(inst.service, [RegisteredInstance(inst, {inst.gate_check_id: "passing"})], None)],
                      "/p", "127.0.0.1:1")
        assert "\x00" not in text and "\r" not in text


class StoreWith:
    """What someone with write access to Consul could have put there, bypassing registrator."""

    def __init__(self, service, instances):
        self.service, self.instances = service, instances

    def all_instances(self):
        return {self.service: self.instances}

    def policy(self, service):
        return 0, None


@settings(max_examples=300)
@given(field=st.sampled_from(["service", "proxy_path", "proxy_host", "version", "address"]), value=hostile)
def test_hostile_values_written_straight_into_consul_never_reach_nginx(field, value):
    base = dict(id="h:web:8080", service="demo", address="127.0.0.1", port=1, version="v1", container_id="c",
                container_name="web", image="demo:v1", registered_by="r", proxy_path="/demo/")
    base[field] = value
    inst = Instance(**base)
    view = build_view(StoreWith(inst.service, [RegisteredInstance(inst, {inst.gate_check_id: "passing"})]))
    text = render(view.routes, "/p", "127.0.0.1:1")
    if DANGEROUS & set(value):
        assert view.routes == [] and view.errors                 # left out, and reported
        assert text == render([], "/p", "127.0.0.1:1")           # not a byte of it rendered
    for route in view.routes:                                    # whatever got through is clean
        for s in (route.service, route.path, route.host, route.stable.version if route.stable else ""):
            assert not DANGEROUS & set(s)
