"""AsyncConsul's bounded stale reads, against a stand-in that sets the headers a Consul server
sets; tests/e2e/test_cluster.py shows the same on the real cluster (a server that lost the
leader answers ?stale, and the read refuses it)."""
import asyncio

import pytest
from aiohttp import web

from catalog.consul_client import AsyncConsul, ConsulError


class Server:
    """Answers ?stale with the given LastContact/KnownLeader, and a read without it as the leader."""

    def __init__(self, last_contact_ms: int, known_leader: bool = True, leader_up: bool = True):
        self.last_contact, self.known, self.leader_up = last_contact_ms, known_leader, leader_up
        self.asked = []

    async def handle(self, request):
        stale = "stale" in request.query
        self.asked.append("stale" if stale else "leader")
        if not stale and not self.leader_up:
            return web.Response(status=500, text="No cluster leader")
        headers = {"X-Consul-Index": "7" if stale else "9",
                   "X-Consul-LastContact": str(self.last_contact if stale else 0),
                   "X-Consul-KnownLeader": "true" if (self.known or not stale) else "false"}
        return web.json_response({"from": "follower" if stale else "leader"}, headers=headers)


async def read(server: Server, max_stale):
    app = web.Application()
    app.router.add_get("/v1/catalog/services", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with AsyncConsul(f"127.0.0.1:{port}", None, wait=1, max_stale=max_stale) as c:
            return await c.blocking_get("/v1/catalog/services", {}, 0)
    finally:
        await runner.cleanup()


def test_an_answer_within_the_bound_is_taken_from_any_server():
    s = Server(last_contact_ms=40)
    assert asyncio.run(read(s, 2.0)) == (7, {"from": "follower"})
    assert s.asked == ["stale"]


def test_an_answer_from_a_server_behind_the_leader_by_more_than_the_bound_is_asked_of_the_leader():
    s = Server(last_contact_ms=2500)
    assert asyncio.run(read(s, 2.0)) == (9, {"from": "leader"})
    assert s.asked == ["stale", "leader"]


def test_a_server_that_knows_no_leader_is_not_believed_and_with_no_leader_the_read_fails():
    s = Server(last_contact_ms=0, known_leader=False, leader_up=False)
    with pytest.raises(ConsulError, match="No cluster leader"):
        asyncio.run(read(s, 2.0))
    assert s.asked == ["stale", "leader"]


def test_without_a_bound_every_read_goes_to_the_leader():
    s = Server(last_contact_ms=0)
    assert asyncio.run(read(s, None)) == (9, {"from": "leader"})
    assert s.asked == ["leader"]
