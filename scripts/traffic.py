"""Send requests through the proxy from many clients (a new X-Client-Id each, so a canary split
gets its share) for a while, then print how many were answered and how many failed.

    python3 scripts/traffic.py --url http://127.0.0.1:8000/demo/1 --seconds 60 [--threads 4] [--rate R]

Stops early on SIGTERM or SIGINT and still prints its count; `--json` for programs.
"""
import argparse
import http.client
import json
import signal
import sys
import threading
import urllib.parse
import uuid
from collections import Counter


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000/demo/1")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--rate", type=float, default=0.0, help="requests/s in all, spread over the threads (0: as fast as they can)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        p.error(f"--url {args.url!r}: expected http://HOST:PORT/PATH")
    stop = threading.Event()
    counts, lock = Counter(), threading.Lock()

    if args.rate < 0:
        p.error(f"--rate {args.rate:g}: expected requests per second, 0 or more")
    pause = max(1, args.threads) / args.rate if args.rate else 0.0

    def client():
        conn = None
        while not stop.wait(pause) if pause else not stop.is_set():
            try:
                conn = conn or http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
                conn.request("GET", url.path or "/", headers={"X-Client-Id": uuid.uuid4().hex})
                resp = conn.getresponse()
                body = resp.read()
                version = json.loads(body).get("version", "") if resp.status == 200 else ""
                key = (resp.status, version)
            except (OSError, ValueError, http.client.HTTPException):
                conn, key = None, (0, "")
            with lock:
                counts[key] += 1

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=client, daemon=True) for _ in range(max(1, args.threads))]
    for t in threads:
        t.start()
    stop.wait(args.seconds)
    stop.set()
    for t in threads:
        t.join(15)
    total = sum(counts.values())
    failed = sum(n for (status, _), n in counts.items() if status != 200)
    versions = Counter()
    for (status, version), n in counts.items():
        if status == 200:
            versions[version] += n
    if args.json:
        print(json.dumps({"requests": total, "failed": failed, "versions": dict(versions)}))
    else:
        print(f"{total} requests, {failed} failed; answered by " +
              (", ".join(f"{v} {n}" for v, n in sorted(versions.items())) or "nobody"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
