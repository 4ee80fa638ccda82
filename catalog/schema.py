"""The KV layout's schema version: which layout of `catalog.kv_layout` the data in Consul has.

gatekeeper writes it when it finds none (a new stack). registrator and proxy-reloader read it
when they start, gatekeeper each time it becomes the leader (before it acts). A part that finds
a version newer than it knows refuses to act and says so: an older build started after an
upgrade must not read, or worse write, data laid out in a way it does not know. (One already
running when the version changes is not stopped: upgrades replace every daemon.) A release that
changes the layout must raise SCHEMA_VERSION and migrate in claim(). docs/operations.md: upgrades.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional

from .cli import EXIT_FAILED
from .kv_layout import SCHEMA
from .retry import TRANSIENT

SCHEMA_VERSION = 1


class SchemaRefusal(RuntimeError):
    """This part may not act on the data in Consul; the message says why and what to do."""


class NewerSchema(SchemaRefusal):
    """The data in Consul is laid out by a newer proxystack than this one."""


class UnreadableSchema(SchemaRefusal):
    """The version key holds something that is not a version."""


def stored(consul) -> Optional[int]:
    """The version Consul holds (None: none written yet); UnreadableSchema on a value that is not one."""
    _, value = consul.kv_get(SCHEMA)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise UnreadableSchema(f"Consul key {SCHEMA} holds {value!r}, not a schema version (a whole number): "
                         f"restore it (this release writes {SCHEMA_VERSION}) or a backup")
    return int(value)


def refuse_newer(consul, part: str) -> Optional[int]:
    """The stored version; raises NewerSchema, saying what to do, when it is newer than ours."""
    version = stored(consul)
    if version is not None and version > SCHEMA_VERSION:
        raise NewerSchema(f"{part} refuses to act: the data in Consul has schema version {version} ({SCHEMA}), "
                          f"written by a newer proxystack; this {part} knows version {SCHEMA_VERSION}. Run the "
                          f"same (newer) release of {part} as the rest of the stack (docs/operations.md, upgrades)")
    return version


def claim(consul) -> int:
    """gatekeeper's: refuse a newer layout; write ours where there is none (a new stack)."""
    version = refuse_newer(consul, "gatekeeper")
    if version is None:
        consul.kv_put(SCHEMA, str(SCHEMA_VERSION), cas=0)     # another gatekeeper may have written it first
        return refuse_newer(consul, "gatekeeper") or SCHEMA_VERSION
    return version


def check_at_start(consul, part: str) -> Optional[int]:
    """registrator's and proxy-reloader's first look at Consul: None to go on; EXIT_FAILED, said on
    stderr, when they may not act (refuse_newer). Consul unreachable or refusing: go on (the
    daemon waits for it as always)."""
    try:
        refuse_newer(consul, part)
    except SchemaRefusal as exc:
        print(f"{part}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TRANSIENT as exc:
        logging.warning("could not read the KV layout's schema version (%s); going on", exc)
    return None
