"""python -m demo [--port 8080]: run the demo service.

On SIGTERM (docker stop, a Swarm task's shutdown) it keeps answering for DEMO_DRAIN_SECONDS
(default 2) before it closes: the stack takes the instance out of every proxy when the signal
is sent, and requests already on their way still get an answer.
"""
import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from .app import Settings, make_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="demo", description="Demo recommendation service")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all, inside a container)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.info("demo %s listening on %s:%d%s", settings.version, args.host, args.port,
                 f" (simulating under proxied traffic: {settings.error_rate:.1%} errors, "
                 f"{settings.added_latency * 1000:.0f} ms added)" if settings.error_rate or settings.added_latency else "")
    asyncio.run(serve(make_app(settings), args.host, args.port, settings.drain_seconds))


async def serve(app: web.Application, host: str, port: int, drain_seconds: float) -> None:
    runner = web.AppRunner(app, access_log_format='%a "%r" %s %Tf')
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.info("stopping: answering for %.1f s more while proxies let go of this instance", drain_seconds)
    await asyncio.sleep(drain_seconds)
    await runner.cleanup()


if __name__ == "__main__":
    main()
