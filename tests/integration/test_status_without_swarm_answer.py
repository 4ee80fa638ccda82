"""`gatekeeper status` while the Docker Engine stops answering Swarm reads (it is leaving or
joining a swarm, or is going down): every service is still reported from Consul, a service with
Swarm tasks says why its replicas are unknown, and the command does not end in a traceback or
refuse. Real Consul, the real Swarm adapter and Docker SDK over an engine socket nothing listens
on, or one that refuses every Swarm read (as an authorization plugin may)."""
from __future__ import annotations

import http.server
import json
import os
import socketserver
import subprocess
import threading

from catalog.cli import EXIT_UNREACHABLE
from catalog.model import Instance
from gatekeeper.fleet.swarm import Swarm, SwarmService, SwarmUnavailable
from gatekeeper.report.status import collect, render_text
from tests.support.no_engine import client_nobody_answers
from testbed.http_backend import reply_json
from testbed.processes import ROOT


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


class RefusingEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An engine on a unix socket that says its version and refuses everything else with the
    reason an authorization plugin gives (500), as the Engine API words its errors."""
    daemon_threads = True


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/version"):
            code, body = 200, {"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "24.0.0"}
        else:
            code, body = 500, {"message": "authorization denied by plugin house-rules: no Swarm reads"}
        reply_json(self, body, code)

    def address_string(self):
        return "engine-socket"

    def log_message(self, *args):
        pass


def test_status_runs_when_the_engine_refuses_to_say_whether_it_is_a_swarm_manager(consul_server, stores, unique,
                                                                                   tmp_path):
    plain, tasks = f"{unique}-plain", f"{unique}-tasks"
    made = [register(stores, plain), register(stores, tasks, swarm_service=f"{tasks}-svc", swarm_task="t1")]
    sock = tmp_path / "engine.sock"
    engine = RefusingEngine(str(sock), _Refuse)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    try:
        out = subprocess.run([str(ROOT / ".venv" / "bin" / "gatekeeper"), "--consul", consul_server.address,
                              "--consul-token-file", consul_server.token_file("operator"), "status", "--json"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DOCKER_HOST": f"unix://{sock}"})
        assert out.returncode == 0, out.stderr
        by_name = {s["service"]: s for s in json.loads(out.stdout)["services"]}
        assert by_name[plain]["replicas"] is None and by_name[plain]["instances"]
        assert "authorization denied by plugin house-rules" in by_name[tasks]["replicas"]["error"]
    finally:
        engine.shutdown()
        engine.server_close()
        for inst in made:
            stores.instances.deregister(inst.id)
        stores.forget_service(plain)
        stores.forget_service(tasks)
