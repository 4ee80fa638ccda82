"""The dashboard's web server (aiohttp): login, the pages, live updates and the actions.

    GET  /login, POST /login, POST /logout   a Consul token in, a session cookie out
    GET  /                                   every service at a glance
    GET  /services/NAME                      one service: instances, tests, history, rollout chart
    GET  /events                             server-sent events: "change" when Consul changed
    POST /services/NAME/actions              promote, weight, abort, rollback (--allow-actions only)
    GET  /healthz                            "ok", for supervisors; no data

A page is rendered on the server; `?fragment=1` gives its live part alone, which the page's
script fetches again on each "change". Reads use the logged-in token, so a page shows what that
token may read and nothing else. Pages carry a strict Content-Security-Policy (no inline
script or style), forms that change something carry the session's CSRF token and must come
from this origin, and errors reach the page as sentences, never as a stack trace.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlsplit

import jinja2
import requests
from aiohttp import web

from catalog.consul_client import ACLPermissionDenied, ConsulException
from catalog.errors import Refused
from catalog.stores import Stores
from catalog.validation import InvalidValue
from gatekeeper.prometheus import Prometheus
from gatekeeper.report.status import UnknownTarget

from . import actions, live, views
from .chart import number
from .sessions import EXPIRED, Sessions, same_secret

log = logging.getLogger(__name__)

COOKIE = "proxystack_session"
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",      # no-referrer would make the browser send Origin: null
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
OPEN_PATHS = ("/login", "/healthz", "/static/")


class Config:
    def __init__(self, consul: str, prometheus: Optional[str] = None, allow_actions: bool = False,
                 idle_seconds: float = 3600.0, watch_wait: float = 60.0, public_url: str = "",
                 streams_per_session: int = 8, streams: int = 64):
        self.consul, self.allow_actions, self.watch_wait = consul, allow_actions, watch_wait
        self.prometheus = Prometheus(prometheus, timeout=2.0) if prometheus else None
        self.sessions = Sessions(idle_seconds)
        # Behind a proxy the browser's origin is not what reaches this server: the address people
        # use, when given, is what a request's Origin must be (and https makes the cookie Secure).
        self.public_origin = _origin(public_url) if public_url else None
        self.streams_per_session, self.streams = streams_per_session, streams


CONFIG = web.AppKey("config", Config)


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _when(t) -> str:
    """A history entry's time in words; "?" for one no calendar holds (1e300, written by hand)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if number(t) > 0 else "?"
    except (OverflowError, OSError, ValueError):
        return "?"


def _figure(v, unit="", digits=1) -> str:
    return f"{v:.{digits}f}{unit}" if number(v, None) is not None else "-"


TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                               autoescape=True, undefined=jinja2.ChainableUndefined)
TEMPLATES.filters.update(when=_when, figure=_figure, urlpart=lambda s: quote(str(s), safe=""))


def page(name: str, status: int = 200, **context) -> web.Response:
    context.setdefault("session", None)
    return web.Response(text=TEMPLATES.get_template(name).render(**context), status=status,
                        content_type="text/html", charset="utf-8")


def problem_of(exc: BaseException, config: Config) -> tuple:
    """(HTTP status, a sentence for the page) for what went wrong while reading."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return 503, (f"Consul at {config.consul} does not answer ({type(exc).__name__}). This page updates "
                     "by itself once it is back.")
    if isinstance(exc, ACLPermissionDenied):
        return 403, (f"Consul refused this token what the page reads ({str(exc)[:200]}). Log in with a token "
                     "that may read services, nodes and the stack's keys (the viewer or operator token).")
    if isinstance(exc, UnknownTarget):
        return 404, str(exc)
    if isinstance(exc, ConsulException):
        return 502, f"Consul at {config.consul} answered with an error: {str(exc)[:300]}"
    return 500, f"the dashboard failed to read this page ({type(exc).__name__}); its log has the details"


async def in_thread(fn, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


# --- middlewares -----------------------------------------------------------------------------
@web.middleware
async def security_headers(request: web.Request, handler):
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        resp = exc
    if not resp.prepared:
        resp.headers.update(SECURITY_HEADERS)
        if not request.path.startswith("/static/"):
            resp.headers.setdefault("Cache-Control", "no-store")
    if isinstance(resp, web.HTTPException) and resp.status >= 300:
        raise resp
    return resp


@web.middleware
async def errors(request: web.Request, handler):
    """Whatever fails reaches the page as a sentence; the trace goes to the log only."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:          # noqa: BLE001 -- the page must never show a trace
        config: Config = request.app[CONFIG]
        status, message = problem_of(exc, config)
        if status == 500:
            log.exception("%s %s", request.method, request.path)
        if request.query.get("fragment"):
            return web.Response(text=message, status=status)
        return page("problem.html", status=status, message=message, session=request.get("session"),
                    config=config, live=request.method == "GET")


@web.middleware
async def authenticated(request: web.Request, handler):
    if request.path.startswith(OPEN_PATHS):
        return await handler(request)
    config: Config = request.app[CONFIG]
    live = bool(request.query.get("fragment")) or request.path == "/events"   # the page itself, not a person
    session, why = config.sessions.lookup(request.cookies.get(COOKIE), use=not live)
    if session is None:
        if live:
            return web.Response(text="log in again", status=401)
        target = "/login" + ("?expired=1" if why == EXPIRED else "")
        raise web.HTTPSeeOther(target)
    request["session"] = session
    return await handler(request)


# --- handlers --------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def login_form(request: web.Request) -> web.Response:
    message = "Your session expired; log in again." if request.query.get("expired") else ""
    return page("login.html", message=message, config=request.app[CONFIG])


async def login(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    refused = cross_origin(request)
    if refused:
        return page("login.html", status=403, message=refused, config=config)
    form = await request.post()
    token = str(form.get("token", "")).strip()
    if not token:
        return page("login.html", status=400, config=config,
                    message="Paste a Consul ACL token: the viewer's or the operator's (make demo prints where they are).")
    try:
        who, may_act = await in_thread(views.who_is, Stores.connect(config.consul, token=token, timeout=5))
    except views.AnonymousToken:
        return page("login.html", status=403, config=config,
                    message="That is Consul's anonymous token, which anyone may type: it is no login. Paste the "
                            "viewer's or the operator's token.")
    except ACLPermissionDenied:
        return page("login.html", status=403, config=config,
                    message="Consul does not know this token (it may have been deleted or mistyped). Check it and "
                            "try again.")
    except (requests.RequestException, ConsulException) as exc:
        return page("login.html", status=503, config=config,
                    message=f"Consul at {config.consul} does not answer ({type(exc).__name__}); try again once it is up.")
    session = config.sessions.open(token, who, may_act)
    resp = web.HTTPSeeOther("/")
    secure = request.secure or (config.public_origin or ("",))[0] == "https"
    resp.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/", secure=secure)
    log.info("login: %s (actions %s)", who, "allowed" if may_act and config.allow_actions else "off")
    raise resp


async def logout(request: web.Request) -> web.Response:
    if not cross_origin(request) and same_secret(str((await request.post()).get("csrf", "")), request["session"].csrf):
        request.app[CONFIG].sessions.close(request["session"].id)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(COOKIE, path="/")
    raise resp


async def overview(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    session = request["session"]
    data = await in_thread(views.overview, Stores.connect(config.consul, token=session.token, timeout=5),
                           config.prometheus)
    name = "_overview.html" if request.query.get("fragment") else "overview.html"
    return page(name, data=data, session=session, config=config)


async def service(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    session = request["session"]
    data = await in_thread(views.service_page, Stores.connect(config.consul, token=session.token, timeout=5),
                           request.match_info["name"])
    fragment = bool(request.query.get("fragment"))
    flash = None if fragment else session.flash
    if not fragment:
        session.flash = None
    name = "_service.html" if fragment else "service.html"
    return page(name, data=data, session=session, config=config, flash=flash,
                actions=config.allow_actions and session.may_act)


def cross_origin(request: web.Request) -> str:
    """Why a state-changing request is refused as coming from another origin, or ""."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin is None:
        return ""          # browsers send Origin on every POST; a client without one holds no cookie of ours
    ours = request.app[CONFIG].public_origin or (request.scheme, request.host)
    parts = urlsplit(origin)
    if (parts.scheme, parts.netloc) != ours:
        return (f"refused: a request from {parts.scheme}://{parts.netloc} may not change anything here "
                f"(this dashboard is {ours[0]}://{ours[1]}; behind a proxy, start it with --public-url)")
    return ""


async def act(request: web.Request) -> web.Response:
    config: Config = request.app[CONFIG]
    session = request["session"]
    service_name = request.match_info["name"]
    form = await request.post()
    refused = cross_origin(request)
    if not refused and not same_secret(str(form.get("csrf", "")), session.csrf):
        refused = "refused: the form's CSRF token is missing or wrong; reload the page and try again"
    if not refused and not config.allow_actions:
        refused = "actions are off: the dashboard was started without --allow-actions"
    if not refused and not session.may_act:
        refused = "this token may not change routing policies; log in with the operator's token"
    if refused:
        log.warning("action refused for %s on %s: %s", session.who, service_name, refused)
        return page("problem.html", status=403, message=refused, session=session, config=config, live=False)
    try:
        message = await in_thread(actions.perform, Stores.connect(config.consul, token=session.token, timeout=5),
                                  service_name, str(form.get("action", "")), str(form.get("weight", "")),
                                  f"dashboard ({session.who})")
        session.flash = ("ok", message)
    except (Refused, InvalidValue, actions.UnknownAction) as exc:
        session.flash = ("bad", str(exc))
    raise web.HTTPSeeOther(f"/services/{quote(service_name, safe='')}")


def make_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[security_headers, errors, authenticated], client_max_size=64 * 1024)
    app[CONFIG] = config
    app[live.STREAMS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", overview)
    app.router.add_get("/services/{name}", service)
    app.router.add_post("/services/{name}/actions", act)
    app.router.add_get("/events", functools.partial(live.events, config=config))
    app.router.add_static("/static/", HERE / "static", append_version=False)
    return app
