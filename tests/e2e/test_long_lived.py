"""Long-lived connections through the proxy, in both modes, on the real stack: a WebSocket (the
demo's echo at /demo/ws) and a stream of server-sent events (/demo/events). A WebSocket stays
open and answering while the route's instances change; in dynamic mode that costs no reload.
And a request an instance holds past the read timeout is retried on another instance, however
long that timeout is."""
from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import docker.errors
import pytest
import requests

from tests.conftest import SESSION
from testbed.load import WebSocketEcho
from testbed.nginx_workers import WorkerGenerations
from testbed.stack import Stack

pytestmark = pytest.mark.e2e

PORTS = {"dynamic": 18024, "reload": 18025}
READ_TIMEOUT = 12       # longer than the 10 s nginx's retries were once limited to


@pytest.fixture(scope="module", params=sorted(PORTS))
def stack(request, consul_server, docker_client, demo_images, tmp_path_factory):
    mode = request.param
    s = Stack(consul_server, tmp_path_factory.mktemp(f"long-{mode}"), docker_client, f"{SESSION}l{mode[0]}",
              PORTS[mode], service=f"long{mode[0]}", mode=mode,
              proxy_args=("--read-timeout", str(READ_TIMEOUT))).start()
    try:
        first = s.deploy("v1", "demo:v1")
        s.wait(lambda: s.proxy_serves([first]), 120, "v1 served by the proxy")
        yield s
    finally:
        s.stop()


Echo = WebSocketEcho


def test_a_websocket_is_proxied_both_ways(stack):
    echo = Echo(stack.listen_port)
    echo.start()
    assert echo.open.wait(15) and echo.error is None, f"no WebSocket through the proxy: {echo.error!r}"
    time.sleep(1)
    answers = echo.finish()
    assert echo.error is None, repr(echo.error)
    assert len(answers) >= 3 and answers == [f"v1: m{n}" for n in range(len(answers))]


def test_server_sent_events_arrive_as_they_are_written(stack):
    async def read():
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{stack.listen_port}/demo/events?count=3&every=1"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
                seen = []
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        seen.append((json.loads(line[6:]), time.monotonic()))
                return seen
    events = asyncio.run(read())
    assert [e for e, _ in events] == [{"n": n, "version": "v1"} for n in range(3)]
    # Written 2 s apart: a proxy that held the stream until its end would hand them over together.
    assert events[-1][1] - events[0][1] >= 1.5, f"events arrived {events[-1][1] - events[0][1]:.2f} s apart"


def test_a_websocket_stays_open_while_the_routes_instances_come_and_go(stack):
    """A second instance joins the route and leaves again while the socket talks. In dynamic
    mode the proxy takes both changes without a reload; in reload mode the old worker keeps the
    socket (for up to worker_shutdown_timeout)."""
    first = stack.containers["v1"]
    master = stack.nginx.master_pid()
    generations = WorkerGenerations(master)
    generations.start()
    echo = Echo(stack.listen_port)
    echo.start()
    second = None
    try:
        assert echo.open.wait(15) and echo.error is None, repr(echo.error)
        second = stack.deploy("v1b", "demo:v1")
        stack.wait(lambda: stack.proxy_serves([first, second]), 120, "the second instance served")
        second.remove(force=True)
        stack.wait(lambda: stack.proxy_serves([first]), 60, "the second instance out of the route")
        time.sleep(1)
    finally:
        answers = echo.finish()
        new_workers = generations.finish()
        if stack.containers.pop("v1b", None) is not None:
            try:
                second.remove(force=True)          # when the test stopped before it did
            except docker.errors.NotFound:
                pass
    assert echo.error is None, f"the WebSocket ended: {echo.error!r} after {len(answers)} answers"
    assert answers == [f"v1: m{n}" for n in range(len(answers))] and len(answers) >= 5
    if stack.mode == "dynamic":
        assert new_workers == 0, f"{new_workers} nginx reloads for two instance changes"


def test_a_request_an_instance_never_answers_is_retried_on_another_after_the_read_timeout(stack):
    """The second instance holds every proxied request for 60 s (DEMO_ADDED_LATENCY; its tests
    call it directly and pass). Round robin sends each worker's every other request to it."""
    first = stack.containers["v1"]
    hung = stack.deploy("hung", "demo:v1", environment={"DEMO_ADDED_LATENCY": "60"})
    try:
        stack.wait(lambda: stack.proxy_serves([first, hung]), 120, "both instances served")

        def timed(_):
            start = time.monotonic()
            r = requests.get(f"http://127.0.0.1:{stack.listen_port}/demo/1", timeout=60)
            return r.status_code, time.monotonic() - start
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(timed, range(8)))
    finally:
        hung.remove(force=True)
        del stack.containers["hung"]
    assert [code for code, _ in answers] == [200] * 8, answers
    retried = [t for _, t in answers if t >= READ_TIMEOUT - 1]
    assert retried, f"no request met the hung instance: {answers}"
    assert all(t < READ_TIMEOUT + 8 for t in retried), answers
