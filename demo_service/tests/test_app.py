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
