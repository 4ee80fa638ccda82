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


# Label values that each field's rule accepts: the generator starts from these, so most examples
# get past validation and reach the check that what comes out is clean.
VALID = {
    "SERVICE_NAME": st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
    "proxy.path": st.from_regex(r"/(?:[A-Za-z0-9._~-]{1,10}/){0,3}", fullmatch=True),
    "proxy.host": st.from_regex(r"[a-z0-9]{1,10}(?:\.[a-z0-9]{1,10}){0,2}", fullmatch=True),
    "gatekeeper.version": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    "gatekeeper.tests": st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,20}:[a-z0-9]{1,5}", fullmatch=True),
    "SERVICE_TAGS": st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,10}", fullmatch=True),
                             min_size=1, max_size=3).map(",".join),
    "SERVICE_REGION": st.from_regex(r"[A-Za-z0-9._:/@=+,-]{0,30}", fullmatch=True),
    "SERVICE_CHECK_HTTP": st.from_regex(r"/[A-Za-z0-9._~/-]{0,20}", fullmatch=True),
    "SERVICE_CHECK_INTERVAL": st.from_regex(r"[1-9][0-9]{0,3}(?:ms|s|m)", fullmatch=True),
}
SPLICE = sorted(DANGEROUS - {" "}) + ["é", "%", "\t"]


@st.composite
def labels_maybe_spliced(draw):
    """(labels, spliced key or None): valid values, one of them perhaps with a hostile character
    inserted somewhere."""
    keys = draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=5, unique=True))
    labels = {k: draw(VALID[k]) for k in keys}
    spliced = draw(st.one_of(st.none(), st.sampled_from(keys)))
    if spliced:
        value = labels[spliced]
        at = draw(st.integers(0, len(value)))
        labels[spliced] = value[:at] + draw(st.sampled_from(SPLICE)) + value[at:]
    return labels, spliced


def assert_clean(instances):
    for inst in instances:
        for value in instance_strings(inst):
            assert not DANGEROUS & set(value.replace(" ", "")), value
        text = render([route_for(inst.service, [RegisteredInstance(inst, {inst.gate_check_id: "passing"})], None)],
                      "/p", "127.0.0.1:1")
        assert "\x00" not in text and "\r" not in text


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(labels_maybe_spliced())
def test_valid_labels_are_registered_clean_and_a_hostile_character_anywhere_is_refused_or_dropped(case):
    labels, spliced = case
    c = Container(id="c" * 64, name="web1", image="demo:v1", running=True, labels=labels,
                  ports=(PublishedPort(8080, "tcp", "127.0.0.1", 32768),))
    if spliced is None:
        instances = instances_for(c, Settings(hostname="h"))     # valid input must not be refused
        assert len(instances) == 1
        assert_clean(instances)
        return
    try:
        instances = instances_for(c, Settings(hostname="h"))
    except Rejected as exc:
        assert exc.label and exc.reason
        return
    assert_clean(instances)      # accepted only when the character was stripped (a tag's edge)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(LABEL_KEYS), hostile, min_size=1))
def test_arbitrary_hostile_labels_are_rejected_or_come_out_clean(labels):
    c = Container(id="c" * 64, name="web1", image="demo:v1", running=True, labels=labels,
                  ports=(PublishedPort(8080, "tcp", "127.0.0.1", 32768),))
    try:
        instances = instances_for(c, Settings(hostname="h"))
    except (Rejected, Skipped) as exc:
        assert exc.reason
        return
    assert_clean(instances)


class InstancesWith:
    """What someone with write access to Consul could have put there, bypassing registrator."""

    def __init__(self, service, instances):
        self.service, self.instances = service, instances

    def all(self):
        return {self.service: self.instances}


class NoPolicies:
    def get(self, service):
        return 0, None


@settings(max_examples=300)
@given(field=st.sampled_from(["service", "proxy_path", "proxy_host", "version", "address"]), value=hostile)
def test_hostile_values_written_straight_into_consul_never_reach_nginx(field, value):
    base = dict(id="h:web:8080", service="demo", address="127.0.0.1", port=1, version="v1", container_id="c",
                container_name="web", image="demo:v1", registered_by="r", proxy_path="/demo/")
    base[field] = value
    inst = Instance(**base)
    view = build_view(InstancesWith(inst.service, [RegisteredInstance(inst, {inst.gate_check_id: "passing"})]),
                      NoPolicies())
    text = render(view.routes, "/p", "127.0.0.1:1")
    if DANGEROUS & set(value):
        assert view.routes == [] and view.errors                 # left out, and reported
        assert text == render([], "/p", "127.0.0.1:1")           # not a byte of it rendered
    for route in view.routes:                                    # whatever got through is clean
        for s in (route.service, route.path, route.host, route.stable.version if route.stable else ""):
            assert not DANGEROUS & set(s)


EXAMPLES = {"SERVICE_NAME": "web-1", "proxy.path": "/api/v1/", "proxy.host": "demo.example.com",
            "gatekeeper.version": "v1.2_3-rc", "gatekeeper.tests": "reg/demo-test:v1", "SERVICE_TAGS": "a,b=1",
            "SERVICE_REGION": "eu-1", "SERVICE_CHECK_HTTP": "/health/x", "SERVICE_CHECK_INTERVAL": "10s"}


def test_every_dangerous_character_at_every_position_of_every_label_is_refused_or_dropped():
    """Exhaustive, where the property test above samples: each label, each character, each place."""
    reached = 0
    for key, value in EXAMPLES.items():
        for ch in SPLICE:
            for at in range(len(value) + 1):
                labels = {"SERVICE_CHECK_HTTP": "/h", key: value[:at] + ch + value[at:]}
                c = Container(id="c" * 64, name="web1", image="demo:v1", running=True, labels=labels,
                              ports=(PublishedPort(8080, "tcp", "127.0.0.1", 32768),))
                try:
                    instances = instances_for(c, Settings(hostname="h"))
                except Rejected:
                    continue
                reached += 1
                assert_clean(instances)
    assert reached < 60, "almost every splice must be refused outright"
