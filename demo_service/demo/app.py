"""aiohttp application of the demo recommendation service."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from aiohttp import web

_ID = re.compile(r"[0-9]{1,18}")
REC_MODULUS = 10007
REC_FACTOR = 7671          # rec(1) == 7671


SETTINGS = web.AppKey("settings")
COUNTERS = web.AppKey("counters", dict)


def recommend(item_id: int) -> int:
    """The recommendation for an item: deterministic, so every instance answers alike."""
    return (item_id * REC_FACTOR) % REC_MODULUS


@dataclass
class Settings:
    version: str = "dev"
    # Simulates a release whose configuration breaks the response contract: unit tests run
    # with the default settings pass, the integration tests against the container fail.
    broken: bool = False

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(version=os.environ.get("DEMO_VERSION", "dev") or "dev",
                   broken=os.environ.get("DEMO_BROKEN", "") not in ("", "0"))


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


async def get_rec(request: web.Request) -> web.Response:
    settings: Settings = request.app[SETTINGS]
    counters = request.app[COUNTERS]
    counters["requests"] += 1
    if "X-Forwarded-For" in request.headers:      # set by the proxy
        counters["proxied"] += 1
    raw = request.match_info["item_id"]
    if not _ID.fullmatch(raw):
        return json_error(400, f"id must be a non-negative integer of at most 18 digits, got {raw!r}")
    item_id = int(raw)
    if settings.broken:
        return web.json_response({"id": str(item_id), "recommendation": str(recommend(item_id))})
    return web.json_response({"id": item_id, "rec": recommend(item_id), "version": settings.version})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": request.app[SETTINGS].version})


async def stats(request: web.Request) -> web.Response:
    """Request counters: `proxied` counts the requests that came through the proxy."""
    return web.json_response(dict(request.app[COUNTERS]))


def make_app(settings: Settings | None = None) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings or Settings()
    app[COUNTERS] = {"requests": 0, "proxied": 0}
    app.router.add_get("/demo/{item_id}", get_rec)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/stats", stats)
    return app
