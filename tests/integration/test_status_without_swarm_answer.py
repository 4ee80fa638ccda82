"""`gatekeeper status` while the Docker Engine stops answering Swarm reads (it is leaving or
joining a swarm, or is going down): every service is still reported from Consul, and the
replicas say why they are unknown instead of the command ending in a traceback. Real Consul, the
real Swarm adapter and Docker SDK over an engine socket nothing listens on."""
from __future__ import annotations

import json

import docker

from catalog.cli import EXIT_UNREACHABLE
from catalog.model import Instance
from gatekeeper.fleet.swarm import Swarm, SwarmService, SwarmUnavailable
from gatekeeper.report.status import collect, render_text


def test_status_reports_every_service_and_why_its_replicas_are_unknown(stores, unique, tmp_path):
    inst = Instance(id=f"noswarm:{unique}:8080", service=unique, address="127.0.0.1", port=30011, version="v1",
                    container_id=f"c{unique}", container_name=unique, image="demo:v1",
                    registered_by="registrator@noswarm")
    stores.instances.register(inst)
    stores.instances.apply_gate(inst, True, "9/9 passed (set by the test)")
    swarm = Swarm(docker.DockerClient(base_url=f"unix://{tmp_path}/docker.sock", version="1.41", timeout=2))
    try:
        data = collect(stores, unique, swarm)
        [s] = data["services"]
        assert [i["version"] for i in s["instances"]] == ["v1"]
        assert "the Docker Engine did not answer" in s["replicas"]["error"]
        json.dumps(data)                                    # what --json prints
        text = render_text(data)
        assert "replicas unknown: the Docker Engine did not answer" in text and "v1" in text
    finally:
        stores.instances.deregister(inst.id)
        stores.forget_service(unique)


def test_a_swarm_call_the_engine_does_not_answer_is_unreachable_not_a_traceback(tmp_path):
    swarm = Swarm(docker.DockerClient(base_url=f"unix://{tmp_path}/docker.sock", version="1.41", timeout=2))
    svc = SwarmService("id", "demo-svc", 9, 3, "demo:v2", registers_as="demo")
    for call in (swarm.active, lambda: swarm.service("demo"), swarm.scaled_services, lambda: swarm.running_tasks(svc),
                 lambda: swarm.scale(svc, 2), lambda: swarm.roll_back(svc)):
        try:
            call()
        except SwarmUnavailable as exc:
            assert exc.exit_code == EXIT_UNREACHABLE and "try again in a moment" in str(exc)
        else:
            raise AssertionError("a Swarm call to an engine that does not answer returned")
