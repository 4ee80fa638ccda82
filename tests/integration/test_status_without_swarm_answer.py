"""`gatekeeper status` while the Docker Engine stops answering Swarm reads (it is leaving or
joining a swarm, or is going down): every service is still reported from Consul, a service with
Swarm tasks says why its replicas are unknown, and the command does not end in a traceback.
Real Consul, the real Swarm adapter and Docker SDK over an engine socket nothing listens on."""
from __future__ import annotations

import json

from catalog.cli import EXIT_UNREACHABLE
from catalog.model import Instance
from gatekeeper.fleet.swarm import Swarm, SwarmService, SwarmUnavailable
from gatekeeper.report.status import collect, render_text
from tests.support.no_engine import client_nobody_answers


def register(stores, service, **swarm):
    inst = Instance(id=f"noswarm:{service}:8080", service=service, address="127.0.0.1", port=30011, version="v1",
                    container_id=f"c{service}", container_name=service, image="demo:v1",
                    registered_by="registrator@noswarm", **swarm)
    stores.instances.register(inst)
    stores.instances.apply_gate(inst, True, "9/9 passed (set by the test)")
    return inst


def test_status_reports_every_service_and_why_swarm_replicas_are_unknown(stores, unique, tmp_path):
    plain, tasks = f"{unique}-plain", f"{unique}-tasks"
    made = [register(stores, plain), register(stores, tasks, swarm_service=f"{tasks}-svc", swarm_task="t1")]
    swarm = Swarm(client_nobody_answers(tmp_path))
    try:
        data = collect(stores, None, swarm)
        by_name = {s["service"]: s for s in data["services"]}
        assert [i["version"] for i in by_name[plain]["instances"]] == ["v1"]
        assert by_name[plain]["replicas"] is None                  # no Swarm tasks: nothing to say
        assert "the Docker Engine did not answer" in by_name[tasks]["replicas"]["error"]
        json.dumps(data)                                           # what --json prints
        text = render_text(data)
        assert text.count("replicas unknown: the Docker Engine did not answer") == 1, text
    finally:
        for inst in made:
            stores.instances.deregister(inst.id)
        stores.forget_service(plain)
        stores.forget_service(tasks)


def test_a_swarm_call_the_engine_does_not_answer_is_unreachable_not_a_traceback(tmp_path):
    swarm = Swarm(client_nobody_answers(tmp_path))
    svc = SwarmService("id", "demo-svc", 9, 3, "demo:v2", registers_as="demo")
    for call in (swarm.active, lambda: swarm.service("demo"), swarm.scaled_services, lambda: swarm.running_tasks(svc),
                 lambda: swarm.scale(svc, 2), lambda: swarm.roll_back(svc)):
        try:
            call()
        except SwarmUnavailable as exc:
            assert exc.exit_code == EXIT_UNREACHABLE and "try again in a moment" in str(exc)
        else:
            raise AssertionError("a Swarm call to an engine that does not answer returned")
