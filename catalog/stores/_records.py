"""Reading JSON records kept in KV: one damaged record is skipped or logged, never fatal."""
from __future__ import annotations

import logging

from ..consul_client import ConsulClient

log = logging.getLogger(__name__)


def read_record(consul: ConsulClient, key: str, parse, what: str):
    """A JSON record kept in KV, parsed; None when absent or unreadable (logged: one damaged
    record must not stop a daemon)."""
    raw = consul.kv_get(key)[1]
    if not raw:
        return None
    try:
        return parse(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.error("ignoring unreadable %s: %s", what, exc)
        return None


def records_under(consul: ConsulClient, prefix: str, parse) -> dict:
    """Every JSON record under a KV prefix, by the rest of its key; unreadable ones skipped."""
    out = {}
    for key, raw in consul.kv_list(prefix).items():
        try:
            out[key[len(prefix):]] = parse(raw)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return out
