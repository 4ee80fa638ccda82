"""Unit tests of the demo service; they also run inside `docker build`, so a failure stops the build."""
from demo.app import Settings, make_app, recommend


async def test_rec_for_item_1_is_7671(aiohttp_client):
    client = await aiohttp_client(make_app(Settings(version="v9")))
    resp = await client.get("/demo/1")
    assert resp.status == 200
    assert await resp.json() == {"id": 1, "rec": 7671, "version": "v9"}


def test_recommendation_is_deterministic_and_bounded():
    assert recommend(42) == recommend(42)
    assert all(0 <= recommend(i) < 10007 for i in range(0, 5000, 7))


async def test_non_integer_id_is_a_400_with_a_json_error(aiohttp_client):
    client = await aiohttp_client(make_app())
    for bad in ("abc", "-1", "1.5", "9" * 19):
        resp = await client.get(f"/demo/{bad}")
        assert resp.status == 400, bad
        body = await resp.json()
        assert "non-negative integer" in body["error"]


async def test_health_and_version(aiohttp_client):
    client = await aiohttp_client(make_app(Settings(version="v2")))
    assert await (await client.get("/health")).json() == {"status": "ok"}
    assert await (await client.get("/version")).json() == {"version": "v2"}


async def test_stats_count_proxied_requests_separately(aiohttp_client):
    client = await aiohttp_client(make_app())
    await client.get("/demo/1")
    await client.get("/demo/2", headers={"X-Forwarded-For": "127.0.0.1"})
    assert await (await client.get("/stats")).json() == {"requests": 2, "proxied": 1}


def test_bad_release_switches_are_validated_with_a_message_naming_the_variable():
    import pytest
    s = Settings.from_env({"DEMO_ERROR_RATE": "5%", "DEMO_ADDED_LATENCY": "1500ms"})
    assert (s.error_rate, s.added_latency) == (0.05, 1.5)
    assert Settings.from_env({"DEMO_ERROR_RATE": "0.2", "DEMO_ADDED_LATENCY": "2s"}).added_latency == 2.0
    assert Settings.from_env({}).error_rate == 0.0
    for env, name in (({"DEMO_ERROR_RATE": "150%"}, "DEMO_ERROR_RATE"), ({"DEMO_ERROR_RATE": "x"}, "DEMO_ERROR_RATE"),
                      ({"DEMO_ERROR_RATE": "nan"}, "DEMO_ERROR_RATE"), ({"DEMO_ADDED_LATENCY": "-1"}, "DEMO_ADDED_LATENCY"),
                      ({"DEMO_ADDED_LATENCY": "61s"}, "DEMO_ADDED_LATENCY")):
        with pytest.raises(ValueError, match=name):
            Settings.from_env(env)


async def test_simulated_errors_hit_proxied_requests_only(aiohttp_client):
    client = await aiohttp_client(make_app(Settings(version="v9", error_rate=1.0)))
    direct = await client.get("/demo/1")
    assert direct.status == 200                      # what the integration tests see
    proxied = await client.get("/demo/1", headers={"X-Forwarded-For": "127.0.0.1"})
    assert proxied.status == 500
    assert "DEMO_ERROR_RATE" in (await proxied.json())["error"]


async def test_simulated_latency_delays_proxied_requests_only(aiohttp_client):
    import time
    client = await aiohttp_client(make_app(Settings(added_latency=0.3)))
    t0 = time.monotonic()
    assert (await client.get("/demo/1")).status == 200
    direct = time.monotonic() - t0
    t0 = time.monotonic()
    assert (await client.get("/demo/1", headers={"X-Forwarded-For": "127.0.0.1"})).status == 200
    assert time.monotonic() - t0 >= 0.3 > direct


async def test_health_fails_on_request_until_a_restart_and_never_through_the_proxy(aiohttp_client):
    client = await aiohttp_client(make_app())
    assert (await client.post("/health/fail", headers={"X-Forwarded-For": "10.0.0.1"})).status == 403
    assert (await client.get("/health")).status == 200
    assert (await client.post("/health/fail")).status == 200
    resp = await client.get("/health")
    assert resp.status == 503 and "POST /health/fail" in (await resp.json())["why"]
    fresh = await aiohttp_client(make_app())           # a restarted process is healthy again
    assert (await fresh.get("/health")).status == 200


async def test_health_fails_a_set_time_after_the_start(aiohttp_client):
    import asyncio
    client = await aiohttp_client(make_app(Settings(health_fail_after=0.3)))
    assert (await client.get("/health")).status == 200
    await asyncio.sleep(0.35)
    assert (await client.get("/health")).status == 503
    assert Settings.from_env({"DEMO_HEALTH_FAIL_AFTER": "5"}).health_fail_after == 5.0
    assert Settings.from_env({}).drain_seconds == 2.0


def test_after_sigterm_it_keeps_answering_for_its_drain_time_then_exits():
    import os, signal, socket, subprocess, sys, time, urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DEMO_DRAIN_SECONDS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "demo", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    url = f"http://127.0.0.1:{port}/demo/1"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert urllib.request.urlopen(url, timeout=1).status == 200     # still answering, mid-drain
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()


async def test_the_websocket_echoes_each_message_with_the_version(aiohttp_client):
    client = await aiohttp_client(make_app(Settings(version="v3")))
    ws = await client.ws_connect("/demo/ws")
    for text in ("hello", "again"):
        await ws.send_str(text)
        assert await ws.receive_str() == f"v3: {text}"
    await ws.close()


async def test_events_stream_one_by_one_and_bad_parameters_are_a_400(aiohttp_client):
    import json
    import time
    client = await aiohttp_client(make_app(Settings(version="v2")))
    resp = await client.get("/demo/events?count=3&every=0.2")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    start, seen = time.monotonic(), []
    async for line in resp.content:
        if line.startswith(b"data: "):
            seen.append((json.loads(line[6:]), time.monotonic() - start))
    assert [e for e, _ in seen] == [{"n": n, "version": "v2"} for n in range(3)]
    assert seen[0][1] < 0.15 <= seen[1][1], "each event is written when it happens, not at the end"
    for bad in ("count=0", "count=101", "count=x", "every=6", "every=-1"):
        resp = await client.get(f"/demo/events?{bad}")
        assert resp.status == 400 and "count must be" in (await resp.json())["error"], bad
