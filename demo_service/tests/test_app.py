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
