"""aiohttp application of the demo recommendation service."""
from __future__ import annotations

import asyncio
import os
import random
import re
import time
from dataclasses import dataclass

from aiohttp import web

_ID = re.compile(r"[0-9]{1,18}")
REC_MODULUS = 10007
REC_FACTOR = 7671          # rec(1) == 7671


SETTINGS = web.AppKey("settings")
COUNTERS = web.AppKey("counters", dict)
HEALTH = web.AppKey("health", dict)


def recommend(item_id: int) -> int:
    """The recommendation for an item: deterministic, so every instance answers alike."""
    return (item_id * REC_FACTOR) % REC_MODULUS


@dataclass
class Settings:
    version: str = "dev"
    # Simulates a release whose configuration breaks the response contract: unit tests run
    # with the default settings pass, the integration tests against the container fail.
    broken: bool = False
    # Simulate a release that passes its integration tests but is bad under production traffic:
    # these apply only to requests that came through the proxy (X-Forwarded-For), never to the
    # tests, which call the container directly.
    error_rate: float = 0.0        # share of proxied /demo requests answered 500, 0..1
    added_latency: float = 0.0     # seconds added to each proxied /demo request, 0..60
    drain_seconds: float = 2.0     # after SIGTERM, seconds it keeps answering before it closes
    # Simulate an instance that goes bad while it runs: /health answers 503 this many seconds
    # after the start (0: never). POST /health/fail (direct requests only) does it at once.
    # Both last until the process restarts, as a leak or a wedged worker would.
    health_fail_after: float = 0.0

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        """Settings from DEMO_* variables; ValueError names the variable and the rule."""
        env = os.environ if env is None else env
        return cls(version=env.get("DEMO_VERSION", "dev") or "dev",
                   broken=env.get("DEMO_BROKEN", "") not in ("", "0"),
                   error_rate=_number(env, "DEMO_ERROR_RATE", 0.0, 1.0,
                                      "a share of requests from 0 to 1, or a percentage such as 5%"),
                   added_latency=_number(env, "DEMO_ADDED_LATENCY", 0.0, 60.0,
                                         "seconds from 0 to 60, or milliseconds such as 1500ms"),
                   drain_seconds=_number(env, "DEMO_DRAIN_SECONDS", 0.0, 60.0, "seconds from 0 to 60",
                                         default=2.0),
                   health_fail_after=_number(env, "DEMO_HEALTH_FAIL_AFTER", 0.0, 86400.0,
                                             "seconds from 0 (never) to 86400"))


def _number(env, name: str, low: float, high: float, rule: str, default: float = 0.0) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    text, scale = raw, 1.0
    if name == "DEMO_ERROR_RATE" and raw.endswith("%"):
        text, scale = raw[:-1], 0.01
    elif name == "DEMO_ADDED_LATENCY" and raw.endswith("ms"):
        text, scale = raw[:-2], 0.001
    elif name == "DEMO_ADDED_LATENCY" and raw.endswith("s"):
        text = raw[:-1]
    try:
        value = float(text) * scale
    except ValueError:
        value = float("nan")
    if not (low <= value <= high):            # also false for nan
        raise ValueError(f"{name}={raw!r} is not valid: expected {rule}")
    return value


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


async def get_rec(request: web.Request) -> web.Response:
    settings: Settings = request.app[SETTINGS]
    counters = request.app[COUNTERS]
    counters["requests"] += 1
    proxied = "X-Forwarded-For" in request.headers      # set by the proxy
    if proxied:
        counters["proxied"] += 1
        if settings.added_latency:
            await asyncio.sleep(settings.added_latency)
        if settings.error_rate and random.random() < settings.error_rate:
            return json_error(500, "simulated failure (DEMO_ERROR_RATE)")
    raw = request.match_info["item_id"]
    if not _ID.fullmatch(raw):
        return json_error(400, f"id must be a non-negative integer of at most 18 digits, got {raw!r}")
    item_id = int(raw)
    if settings.broken:
        return web.json_response({"id": str(item_id), "recommendation": str(recommend(item_id))})
    return web.json_response({"id": item_id, "rec": recommend(item_id), "version": settings.version})


async def health(request: web.Request) -> web.Response:
    settings: Settings = request.app[SETTINGS]
    state = request.app[HEALTH]
    after = settings.health_fail_after
    if state["failing"] or (after and time.monotonic() - state["started"] >= after):
        return web.json_response({"status": "failing", "why": state["failing"] or
                                  f"DEMO_HEALTH_FAIL_AFTER={after:g} s since the start"}, status=503)
    return web.json_response({"status": "ok"})


async def fail_health(request: web.Request) -> web.Response:
    """From now until a restart, /health answers 503. Not through the proxy."""
    if "X-Forwarded-For" in request.headers:
        return json_error(403, "POST /health/fail is for direct requests only, not through the proxy")
    request.app[HEALTH]["failing"] = "POST /health/fail"
    return web.json_response({"status": "failing"})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": request.app[SETTINGS].version})


async def stats(request: web.Request) -> web.Response:
    """Request counters: `proxied` counts the requests that came through the proxy."""
    return web.json_response(dict(request.app[COUNTERS]))


async def echo(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket that answers each text message with it and the version: `v2: hello`."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    version = request.app[SETTINGS].version
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await ws.send_str(f"{version}: {msg.data}")
    return ws


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `count` events (1 to 100, 3 by default) `every` seconds apart (0 to 5,
    0.5 by default), each `{"n": N, "version": V}`, flushed as it is written. `X-Accel-Buffering: no`
    tells a proxy in front (nginx) to pass each event on at once rather than fill a buffer first."""
    try:
        count = int(request.query.get("count", "3"))
        every = float(request.query.get("every", "0.5"))
    except ValueError:
        count, every = -1, -1.0
    if not (1 <= count <= 100 and 0 <= every <= 5):
        return json_error(400, "count must be an integer from 1 to 100 and every a number of seconds "
                               f"from 0 to 5, got count={request.query.get('count')!r} every={request.query.get('every')!r}")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    version = request.app[SETTINGS].version
    for n in range(count):
        if n:
            await asyncio.sleep(every)
        await resp.write(f'id: {n}\ndata: {{"n": {n}, "version": "{version}"}}\n\n'.encode())
    await resp.write_eof()
    return resp


def make_app(settings: Settings | None = None) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings or Settings()
    app[COUNTERS] = {"requests": 0, "proxied": 0}
    app[HEALTH] = {"started": time.monotonic(), "failing": ""}
    app.router.add_get("/demo/ws", echo)          # before /demo/{item_id}, which would take it
    app.router.add_get("/demo/events", events)
    app.router.add_get("/demo/{item_id}", get_rec)
    app.router.add_get("/health", health)
    app.router.add_post("/health/fail", fail_health)
    app.router.add_get("/version", version)
    app.router.add_get("/stats", stats)
    return app
