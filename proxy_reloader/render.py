"""Routes -> nginx configuration text (jinja2). Pure: the same routes give the same bytes.

Two templates: `reload` lists every route and instance (any change is a new file and a reload);
`dynamic` holds neither: routes, their settings and instances reach nginx's Lua router as a
pushed table, so the file changes, and nginx reloads, only when the listener or the proxy's own
options do.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Tuple

import jinja2

from catalog import route_settings
from catalog.routing import Route

RELOAD, DYNAMIC = "reload", "dynamic"
LUA_DIR = Path(__file__).resolve().parent / "lua"

_env = jinja2.Environment(loader=jinja2.PackageLoader("proxy_reloader", "templates"),
                          trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                          undefined=jinja2.StrictUndefined, autoescape=False)
_env.filters["regex_escape"] = re.escape
_env.filters["rate_limit_parts"] = route_settings.rate_limit_parts


@dataclass(frozen=True)
class Settings:
    """Everything in the config that is not a route."""
    prefix: str
    listen: str
    workers: str = "2"
    mode: str = RELOAD
    modules: str = "/usr/lib/nginx/modules"     # where ndk and the Lua module live (dynamic)
    table_size: str = "64m"                     # shared memory for the backend table (dynamic)
    read_timeout: str = "30s"                   # an answer slower than this is a failure (tried on the next)
    grpc_listen: str = ""                       # where gRPC clients connect (HTTP/2 cleartext), "" for none
    tls_listen: str = ""                        # where HTTPS clients connect (dynamic mode), "" for none
    certs_size: str = "16m"                     # shared memory for the pushed certificates (dynamic)
    metrics_size: str = "16m"                   # shared memory for the per-request metrics (dynamic)
    # seconds a version the table no longer lists keeps its metrics after its last request (dynamic)
    metrics_grace: int = 600

    @property
    def config(self) -> Path:
        return Path(self.prefix) / "nginx.conf"

    @property
    def table(self) -> Path:
        return Path(self.prefix) / "backends.json"

    @property
    def admin_dir(self) -> Path:
        return Path(self.prefix) / "admin"

    @property
    def socket(self) -> Path:
        return self.admin_dir / "push.sock"

    @property
    def secret(self) -> Path:
        return self.admin_dir / "secret"

    @property
    def fallback_cert(self) -> Path:
        """The certificate nginx needs for its TLS listener to start; never served (proxystack.certs)."""
        return self.admin_dir / "fallback.crt"

    @property
    def fallback_key(self) -> Path:
        return self.admin_dir / "fallback.key"

    @property
    def tls_port(self) -> str:
        return self.tls_listen.rsplit(":", 1)[-1] if self.tls_listen else ""


def group_by_host(routes: Iterable[Route]) -> List[Tuple[str, List[Route]]]:
    """Server blocks, one per host name (a route with several names is in each of them); routes
    without a name go to the default server, which always exists."""
    groups = {"": []}
    for r in sorted(routes, key=lambda r: (r.path, r.service)):
        for host in r.hosts or ("",):
            groups.setdefault(host, []).append(r)
    return sorted(groups.items())


@functools.lru_cache(maxsize=None)
def lua_code_version(lua_dir: Path = LUA_DIR) -> str:
    """A hash of the Lua modules nginx's workers load: rendered into the config, so that a new
    build whose Lua differs makes the config differ and nginx reloads to load it (workers keep
    the modules they loaded until then)."""
    digest = hashlib.sha256()
    for path in sorted(lua_dir.rglob("*.lua")):
        digest.update(str(path.relative_to(lua_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def render(routes: List[Route], prefix: str, listen: str, workers: str = "2", settings: Settings = None) -> str:
    """render_config with default settings but for these three (prefix, listen and workers are
    ignored when `settings` is given)."""
    return render_config(routes, settings or Settings(prefix, listen, workers))


def render_config(routes: List[Route], s: Settings) -> str:
    """The config; its version (a hash of everything else in it) is written into it, so the
    running nginx can be asked which config its workers serve."""
    ordered = sorted(routes, key=lambda r: r.service)
    template = _env.get_template("nginx-dynamic.conf.j2" if s.mode == DYNAMIC else "nginx.conf.j2")
    args = dict(routes=ordered, servers=group_by_host(ordered), prefix=s.prefix, listen=s.listen,
                workers=s.workers, read_timeout=s.read_timeout, grpc_listen=s.grpc_listen, modules=s.modules,
                lua=str(LUA_DIR), table=str(s.table), secret=str(s.secret), socket=str(s.socket),
                table_size=s.table_size, tls_listen=s.tls_listen, tls_port=s.tls_port, certs_size=s.certs_size,
                metrics_size=s.metrics_size, metrics_grace=s.metrics_grace,
                fallback_cert=str(s.fallback_cert), fallback_key=str(s.fallback_key), lua_version=lua_code_version())
    version = hashlib.sha256(template.render(version="", **args).encode()).hexdigest()[:16]
    return template.render(version=version, **args)


def config_version(text: str) -> str:
    m = re.search(r"config-version ([0-9a-f]{16})", text)
    return m.group(1) if m else ""
