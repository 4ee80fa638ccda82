"""Routes -> nginx configuration text (jinja2). Pure: the same routes give the same bytes."""
from __future__ import annotations

import hashlib
import re
from typing import Iterable, List, Tuple

import jinja2

from catalog.routing import Route

_env = jinja2.Environment(loader=jinja2.PackageLoader("proxy_reloader", "templates"),
                          trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                          undefined=jinja2.StrictUndefined, autoescape=False)


def group_by_host(routes: Iterable[Route]) -> List[Tuple[str, List[Route]]]:
    """Server blocks: routes without a host go to the default server, which always exists."""
    groups = {"": []}
    for r in sorted(routes, key=lambda r: (r.host, r.path, r.service)):
        groups.setdefault(r.host, []).append(r)
    return sorted(groups.items())


def render(routes: List[Route], prefix: str, listen: str, workers: str = "2") -> str:
    """The config; its version (a hash of everything else in it) is written into it, so the
    running nginx can be asked which config its workers serve."""
    ordered = sorted(routes, key=lambda r: r.service)
    template = _env.get_template("nginx.conf.j2")
    args = dict(routes=ordered, servers=group_by_host(ordered), prefix=prefix, listen=listen, workers=workers)
    version = hashlib.sha256(template.render(version="", **args).encode()).hexdigest()[:16]
    return template.render(version=version, **args)


def config_version(text: str) -> str:
    m = re.search(r"config-version ([0-9a-f]{16})", text)
    return m.group(1) if m else ""
