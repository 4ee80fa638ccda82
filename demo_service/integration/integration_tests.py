#!/usr/bin/env python3
"""Integration tests of the demo service's public API, run against a live instance.

    docker run --rm --network host -e URL=http://127.0.0.1:PORT demo-test

Standard library only. Prints one line per check and, last, a one-line summary such as
"9/9 passed in 0.4 s"; exits 0 when every check passed, 1 when any failed, 2 on bad usage.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", "30"))


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"body is not JSON: {self.body[:120]!r}")


def get(base, path):
    req = urllib.request.Request(base + path, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return Response(r.status, r.headers, r.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read().decode("utf-8", "replace"))


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def check_health(base):
    r = get(base, "/health")
    expect(r.status == 200, f"/health answered {r.status}")
    expect(r.json().get("status") == "ok", f"/health body {r.body!r}")


def check_version(base):
    r = get(base, "/version")
    expect(r.status == 200, f"/version answered {r.status}")
    v = r.json().get("version")
    expect(isinstance(v, str) and v, f"version is {v!r}, expected a non-empty string")


def check_rec_shape(base):
    r = get(base, "/demo/1")
    expect(r.status == 200, f"/demo/1 answered {r.status}")
    expect(r.headers.get("Content-Type", "").startswith("application/json"),
           f"Content-Type is {r.headers.get('Content-Type')!r}")
    body = r.json()
    expect(set(body) >= {"id", "rec", "version"}, f"keys are {sorted(body)}, expected id, rec, version")


def check_rec_values(base):
    body = get(base, "/demo/1").json()
    expect(body.get("id") == 1, f"id is {body.get('id')!r}, expected the integer 1")
    expect(type(body.get("rec")) is int, f"rec is {body.get('rec')!r}, expected an integer")


def check_rec_deterministic(base):
    a, b = get(base, "/demo/42").json(), get(base, "/demo/42").json()
    expect(a == b, f"two answers for /demo/42 differ: {a} vs {b}")
    expect(a.get("id") == 42, f"id is {a.get('id')!r}, expected 42")


def check_version_consistent(base):
    v = get(base, "/version").json().get("version")
    rv = get(base, "/demo/7").json().get("version")
    expect(v == rv, f"/version says {v!r} but /demo/7 says {rv!r}")


def check_non_integer_id(base):
    r = get(base, "/demo/abc")
    expect(r.status == 400, f"/demo/abc answered {r.status}, expected 400")
    expect("error" in r.json(), f"400 body has no 'error': {r.body!r}")


def check_negative_id(base):
    r = get(base, "/demo/-5")
    expect(r.status == 400, f"/demo/-5 answered {r.status}, expected 400")


def check_unknown_path(base):
    r = get(base, "/no-such-path")
    expect(r.status == 404, f"/no-such-path answered {r.status}, expected 404")


CHECKS = [check_health, check_version, check_rec_shape, check_rec_values, check_rec_deterministic,
          check_version_consistent, check_non_integer_id, check_negative_id, check_unknown_path]


def wait_ready(base):
    deadline = time.monotonic() + READY_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        try:
            if get(base, "/health").status == 200:
                return None
        except OSError as e:
            last = e
        time.sleep(0.2)
    return f"{base} did not answer /health within {READY_TIMEOUT:.0f} s ({last})"


def main():
    base = os.environ.get("URL", "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        print("usage: set URL to the instance under test, e.g. -e URL=http://127.0.0.1:32768", file=sys.stderr)
        return 2
    print(f"integration tests of {base}", flush=True)
    start = time.monotonic()
    problem = wait_ready(base)
    if problem:
        print(f"0/{len(CHECKS)} passed in {time.monotonic() - start:.1f} s: {problem}")
        return 1
    failed = []
    for check in CHECKS:
        name = check.__name__[len("check_"):]
        t0 = time.monotonic()
        try:
            check(base)
            print(f"  PASS {name} ({(time.monotonic() - t0) * 1000:.0f} ms)", flush=True)
        except (AssertionError, OSError) as e:
            failed.append(name)
            print(f"  FAIL {name}: {e}", flush=True)
    took = time.monotonic() - start
    passed = len(CHECKS) - len(failed)
    if failed:
        print(f"{passed}/{len(CHECKS)} passed in {took:.1f} s; failed: {', '.join(failed)}")
        return 1
    print(f"{passed}/{len(CHECKS)} passed in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
