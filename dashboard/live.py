"""Live pages: one server-sent-event stream per open page, fed by Consul's blocking queries.

Each stream holds two blocking queries made with the page's own token, both cheap to answer:
Consul's KV (listed one level deep, so the answer stays small however many verdicts or history
events there are; its index still moves on any write below, so any KV write wakes the page)
and the checks of every instance (a gate opening or closing, an instance coming or going). A
session may hold 8 streams, the dashboard 64 (each holds two connections to Consul); past
that a page gets 429 and stays as it is. When either index moves,
the page hears "change" once (changes within `QUIET` seconds are sent together) and fetches its
live part again; and once as the stream connects, for what changed since the page was read. An
idle page costs two requests to Consul per `wait` (60 s by default) and a comment line every
`HEARTBEAT` seconds; no polling.

"problem" carries a sentence when Consul cannot be read (the page shows it, and the stream
retries every few seconds); "expired" tells the page its session ended.
"""
from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from aiohttp import web

from catalog.consul_client import AsyncConsul, ConsulError
from catalog.watch import IndexTracker

log = logging.getLogger(__name__)

WATCHED = (("/v1/kv/", {"keys": "", "separator": "/"}), ("/v1/health/state/any", {}))
STREAMS = web.AppKey("streams", dict)      # session id -> its open streams
QUIET = 0.3
HEARTBEAT = 20.0
RETRY = 3.0


async def _watch(consul: AsyncConsul, path: str, params: dict, changes: asyncio.Queue) -> None:
    tracker = IndexTracker()
    first = True
    while True:
        try:
            index, _ = await consul.blocking_get(path, params, tracker.index)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConsulError) as exc:
            await changes.put(("problem", f"Consul cannot be read ({type(exc).__name__}: {str(exc)[:160]}); "
                                          f"retrying every {RETRY:g} s"))
            tracker.index = 0
            first = True
            await asyncio.sleep(RETRY)
            continue
        # The first answer too is a change: the page was read before its stream connected, and a
        # write in between (a verdict written that moment) would otherwise wait for the next one.
        if first:
            await changes.put(("ok", path))
            await changes.put(("change", path))
        elif tracker.advance(index):
            await changes.put(("change", path))
        first = False


async def _send(resp: web.StreamResponse, event: str, data) -> None:
    await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


async def events(request: web.Request, config) -> web.StreamResponse:
    session = request["session"]
    open_streams = request.app[STREAMS]
    if sum(open_streams.values()) >= config.streams or open_streams.get(session.id, 0) >= config.streams_per_session:
        return web.Response(status=429, text="too many open pages; close some, this one updates no more")
    open_streams[session.id] = open_streams.get(session.id, 0) + 1
    try:
        return await _stream(request, config, session)
    finally:
        open_streams[session.id] -= 1
        if not open_streams[session.id]:
            del open_streams[session.id]


async def _stream(request: web.Request, config, session) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    await resp.write(f"retry: {int(RETRY * 1000)}\n\n".encode())
    changes: asyncio.Queue = asyncio.Queue()
    async with AsyncConsul(config.consul, session.token, wait=config.watch_wait) as consul:
        watchers = [asyncio.create_task(_watch(consul, path, params, changes)) for path, params in WATCHED]
        problem = ""
        try:
            while True:
                try:
                    kind, what = await asyncio.wait_for(changes.get(), HEARTBEAT)
                except asyncio.TimeoutError:
                    kind = ""
                if not config.sessions.alive(session.id):        # expired or logged out meanwhile
                    await _send(resp, "expired", "your session ended; log in again")
                    break
                if not kind:
                    await resp.write(b": idle\n\n")
                    continue
                await asyncio.sleep(QUIET)           # let a burst of writes arrive, then say it once
                batch = [(kind, what)]
                while not changes.empty():
                    batch.append(changes.get_nowait())
                problems = [w for k, w in batch if k == "problem"]
                if problems:
                    if problems[-1] != problem:
                        problem = problems[-1]
                        await _send(resp, "problem", problem)
                    continue
                if problem or any(k == "change" for k, _ in batch):
                    problem = ""
                    await _send(resp, "change", sorted({w for _, w in batch}))
        except ConnectionResetError:       # the page was closed
            pass
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
    return resp
