"""python -m demo [--port 8080]: run the demo service."""
import argparse
import logging
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
    web.run_app(make_app(settings), host=args.host, port=args.port, print=None,
                access_log_format='%a "%r" %s %Tf')


if __name__ == "__main__":
    main()
