"""The dashboard as the tests run it: the real process (`python -m dashboard`) on a port of its
own, and Debian's Chromium driven by Playwright for the tests that look at the pages in a
browser."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator, Optional

import requests

from .http_backend import LoopbackHTTP
from .processes import Proc, python_module, wait_until

CHROMIUM = os.environ.get("PROXYSTACK_CHROMIUM", "/usr/bin/chromium")
# Headless, and nothing that reaches out: this machine's network is closed, and a browser that
# keeps retrying Google's hosts slows every page.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


class DashboardServer:
    def __init__(self, base: Path, consul: str, port: int, prometheus: Optional[str] = None,
                 allow_actions: bool = False, session_minutes: Optional[float] = None, name: str = "dashboard"):
        args = ["--listen", f"127.0.0.1:{port}", "--consul", consul]
        if prometheus:
            args += ["--prometheus", prometheus]
        if allow_actions:
            args.append("--allow-actions")
        if session_minutes is not None:
            args += ["--session-minutes", str(session_minutes)]
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.proc = Proc(name, python_module("dashboard", *args), base)

    def start(self) -> "DashboardServer":
        self.proc.start()
        wait_until(lambda: self.proc.alive() and requests.get(self.url + "/healthz", timeout=2).ok, 30,
                   f"the dashboard on {self.url} (log: {self.proc.log_path})")
        return self

    def stop(self) -> None:
        self.proc.stop()

    def login(self, token: str) -> requests.Session:
        """A logged-in HTTP session (what a browser holds after the login form)."""
        http = requests.Session()
        r = http.post(self.url + "/login", data={"token": token}, timeout=10)
        assert r.ok and r.url.rstrip("/") == self.url, f"login failed: {r.status_code} {r.text[:300]}"
        return http

    def csrf(self, http: requests.Session, path: str = "/") -> str:
        """The session's CSRF token, as its pages carry it in every form."""
        found = re.search(r'name="csrf" value="([^"]+)"', http.get(self.url + path, timeout=10).text)
        assert found, "no form with a CSRF token on " + path
        return found.group(1)


@contextlib.contextmanager
def browser() -> Iterator["object"]:
    """Headless Chromium (Debian's) under Playwright; each `new_context()` is a fresh visitor
    (no cookies of another)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def forging_page(target: str, fields: dict) -> Iterator[str]:
    """A page of another origin (another port on 127.0.0.1) with a form that posts `fields` to
    `target`: what a forged request from another site looks like to the dashboard. Yields its URL."""
    import html
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items())
    body = (f'<!doctype html><form method="post" action="{html.escape(target)}">{inputs}'
            f'<button type="submit">win a prize</button></form>').encode()

    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server = LoopbackHTTP(answer)
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.close()
