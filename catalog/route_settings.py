"""A route's own settings: the `proxy.*` labels that shape how the proxy passes its traffic.

    proxy.host=a.example.com,*.b.example.com   names the route answers (exact, or a wildcard)
    proxy.timeout=5s            an upstream read or send idle for longer fails (and WebSockets close)
    proxy.connect_timeout=1s    connecting to an instance takes longer: the next one is tried
    proxy.body_size=10m         a request body declared larger is answered 413
    proxy.buffering=off         responses stream to the client as they come (SSE, long polls)
    proxy.retries=2             idempotent requests tried again on another instance (0: never)
    proxy.allow=10.0.0.0/8,...  only these client networks reach the route (403 otherwise)
    proxy.rate_limit=50r/s,burst=100   requests per client address (429 above it)
    proxy.protocol=grpc         the instances speak gRPC (HTTP/2): served on the gRPC listener
    proxy.https=redirect        plain HTTP: redirect (308) to HTTPS, only (refused), both (served), off
                                (HTTP only); left out: redirect when a certificate covers the host
    proxy.hsts=max-age=31536000;includeSubDomains   Strict-Transport-Security on HTTPS answers

Each value is checked by an allow-list here (a bad one refuses the container with the rule),
kept in its canonical text in the instance's Consul metadata, checked again when read back,
and turned into numbers for the proxy by `for_proxy` (nginx's Lua side checks those numbers
against the push contract once more). A label left out takes the proxy's default.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping, Tuple

from .model import META_ROUTE_SETTING
from .validation import InvalidValue as InvalidSetting   # the same error as every label's


MAX_HOSTS = 16
MAX_ALLOW = 32
MAX_BODY = 1024 * 1024 * 1024            # the listener's own limit: no route may ask for more
_HOST = re.compile(r"(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DURATION = re.compile(r"([1-9][0-9]{0,6})(ms|s|m)")
_SIZE = re.compile(r"([1-9][0-9]{0,9})([kmg]?)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60}
_SIZES = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}

HOSTS_RULE = (f"one to {MAX_HOSTS} lower-case host names separated by commas, each exact (demo.example.com) "
              "or a wildcard for every name under a domain (*.example.com)")


def parse_hosts(label: str, raw: str) -> str:
    """'b.example.com, *.a.example.com' -> '*.a.example.com,b.example.com' (sorted, no repeats)."""
    names = [n.strip() for n in raw.split(",")] if isinstance(raw, str) else [raw]
    if not names or len(names) > MAX_HOSTS or any(
            not isinstance(n, str) or len(n) > 253 or not _HOST.fullmatch(n) for n in names):
        raise InvalidSetting(label, raw, HOSTS_RULE)
    return ",".join(sorted(set(names)))


def check_canonical_hosts(label: str, value: str) -> str:
    """A host list read back from Consul: valid, and exactly as registrator writes it (sorted,
    comma-separated, nothing around the names)."""
    if parse_hosts(label, value) != value:
        raise InvalidSetting(label, value, HOSTS_RULE + ", written sorted with no blanks")
    return value


def hosts_of(canonical: str) -> Tuple[str, ...]:
    return tuple(n for n in canonical.split(",") if n) if canonical else ()


def _seconds(label: str, raw: str, low: float, high: float) -> float:
    m = _DURATION.fullmatch(raw)
    rule = f"a whole number followed by ms, s or m, from {low:g}s to {high:g}s, such as 5s"
    if not m:
        raise InvalidSetting(label, raw, rule)
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not low <= seconds <= high:
        raise InvalidSetting(label, raw, rule)
    return seconds


def _bytes(label: str, raw: str) -> int:
    m = _SIZE.fullmatch(raw)
    rule = "a whole number of bytes, or of k, m or g (1024-based), from 1 to 1g, such as 10m"
    if not m:
        raise InvalidSetting(label, raw, rule)
    size = int(m.group(1)) * _SIZES[m.group(2)]
    if size > MAX_BODY:
        raise InvalidSetting(label, raw, rule)
    return size


def _retries(label: str, raw: str) -> int:
    if not re.fullmatch(r"[0-9]{1,2}", raw) or int(raw) > 10:
        raise InvalidSetting(label, raw, "a whole number of retries from 0 (never retry) to 10")
    return int(raw)


def _protocol(label: str, raw: str) -> str:
    if raw not in ("http", "grpc"):
        raise InvalidSetting(label, raw, "http (the default) or grpc")
    return raw


def _flag(label: str, raw: str) -> bool:
    if raw not in ("on", "off"):
        raise InvalidSetting(label, raw, "on or off")
    return raw == "on"


def _networks(label: str, raw: str) -> Tuple[str, ...]:
    rule = (f"one to {MAX_ALLOW} client networks separated by commas, each an IPv4 or IPv6 address or "
            "network with no host bits set, such as 10.0.0.0/8,192.0.2.7,2001:db8::/32")
    items = [i.strip() for i in raw.split(",")]
    if not items or len(items) > MAX_ALLOW:
        raise InvalidSetting(label, raw, rule)
    out = []
    for item in items:
        if not re.fullmatch(r"[0-9a-fA-F.:/]{2,43}", item):
            raise InvalidSetting(label, raw, rule)
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError:
            raise InvalidSetting(label, item, rule) from None
        out.append(net.with_prefixlen)
    return tuple(sorted(set(out)))


_RATE = re.compile(r"([1-9][0-9]{0,5})r/(s|m)(?:,burst=([0-9]{1,6}))?")


def _rate_limit(label: str, raw: str) -> dict:
    """'50r/s,burst=100' -> {"rate": 50.0 per second, "burst": 100}: a client may send `burst`
    requests more than the rate at once; the next one too many is answered 429."""
    m = _RATE.fullmatch(raw.replace(" ", ""))
    if not m:
        raise InvalidSetting(label, raw, "N requests per second or minute (Nr/s or Nr/m, N from 1 to 999999), "
                             "optionally with ,burst=B (B from 0 to 999999), such as 50r/s,burst=100")
    per = 1 if m.group(2) == "s" else 60
    return {"rate": round(int(m.group(1)) / per, 6), "burst": int(m.group(3) or 0),
            "text": f"{m.group(1)}r/{m.group(2)}" + (f",burst={int(m.group(3))}" if m.group(3) else "")}


def rate_limit_parts(canonical: str) -> Tuple[str, int]:
    """'50r/s,burst=100' -> ('50r/s', 100): the rate as nginx's limit_req_zone writes it, and the burst."""
    m = _RATE.fullmatch(canonical)
    return f"{m.group(1)}r/{m.group(2)}", int(m.group(3) or 0)


HTTPS_MODES = ("redirect", "only", "both", "off")
MAX_HSTS_AGE = 63072000                  # two years, as browsers' preload lists take at most
_HSTS = re.compile(r"max-age=([0-9]{1,8})(;includesubdomains)?")


def _https(label: str, raw: str) -> str:
    if raw not in HTTPS_MODES:
        raise InvalidSetting(label, raw, "redirect (plain HTTP is redirected to HTTPS), only (HTTPS only, plain "
                             "HTTP refused), both (served on both) or off (plain HTTP only)")
    return raw


def _hsts(label: str, raw: str) -> dict:
    """'max-age=31536000; includeSubDomains' -> {"hsts_max_age": 31536000, "hsts_subdomains": True}."""
    m = _HSTS.fullmatch(raw.replace(" ", "").lower())
    if not m or int(m.group(1)) > MAX_HSTS_AGE:
        raise InvalidSetting(label, raw, f"max-age=N (seconds, 0 to {MAX_HSTS_AGE}), optionally followed by "
                             ";includeSubDomains, such as max-age=31536000;includeSubDomains")
    return {"hsts_max_age": int(m.group(1)), "hsts_subdomains": bool(m.group(2)),
            "text": f"max-age={int(m.group(1))}" + (";includeSubDomains" if m.group(2) else "")}


# setting -> (parse raw label text -> value for the proxy, canonical text from that value)
SETTINGS = {
    "timeout": (lambda l, r: _seconds(l, r, 1, 3600), None),
    "connect_timeout": (lambda l, r: _seconds(l, r, 0.01, 60), None),
    "body_size": (_bytes, None),
    "buffering": (_flag, None),
    "retries": (_retries, None),
    "allow": (_networks, lambda v: ",".join(v)),
    "rate_limit": (_rate_limit, lambda v: v["text"]),
    "protocol": (_protocol, None),
    "https": (_https, None),
    "hsts": (_hsts, lambda v: v["text"]),
}
# settings the push carries as several keys of the route (the others: one key, the setting's name)
_SPREAD = ("hsts",)
LABEL_PREFIX = "proxy."
META_PREFIX = META_ROUTE_SETTING  # proxy.timeout=5s is kept in Consul as meta proxy_timeout=5s


def check(key: str, raw, label: str = "") -> str:
    """The canonical text of one setting's value; InvalidSetting names what is wrong."""
    label = label or LABEL_PREFIX + key
    if key not in SETTINGS:
        raise InvalidSetting(label, raw, "a known route setting: " + ", ".join(LABEL_PREFIX + k for k in SETTINGS))
    if not isinstance(raw, str):
        raise InvalidSetting(label, raw, "text")
    raw = raw.strip()
    parse, canonical = SETTINGS[key]
    value = parse(label, raw)
    return canonical(value) if canonical else raw


def from_labels(labels: Mapping[str, str]) -> Tuple[Tuple[str, str], ...]:
    """Every proxy.<setting> label present, checked, in canonical text, sorted by setting."""
    return tuple((k, check(k, labels[LABEL_PREFIX + k])) for k in sorted(SETTINGS) if LABEL_PREFIX + k in labels)


def from_meta(meta: Mapping[str, str]) -> Tuple[Tuple[str, str], ...]:
    """The settings an instance's metadata holds (not checked: `check_all` does that)."""
    return tuple((k, meta[META_PREFIX + k]) for k in sorted(SETTINGS) if META_PREFIX + k in meta)


def is_setting_meta(key: str) -> bool:
    return key.startswith(META_PREFIX) and key[len(META_PREFIX):] in SETTINGS


def check_all(settings: Iterable[Tuple[str, str]]) -> None:
    """Settings read back from Consul: each valid and in the canonical text registrator writes."""
    for k, v in settings:
        if check(k, v, META_PREFIX + k) != v:
            raise InvalidSetting(META_PREFIX + k, v, "the canonical form of the setting "
                                 f"({check(k, v, META_PREFIX + k)!r})")


def for_proxy(settings: Iterable[Tuple[str, str]]) -> dict:
    """The settings as the push carries them: seconds, bytes, counts, a flag, networks."""
    out = {}
    for k, v in settings:
        parse, _ = SETTINGS[k]
        value = parse(LABEL_PREFIX + k, v)
        if isinstance(value, dict):
            value = {key: item for key, item in value.items() if key != "text"}
        if k in _SPREAD:
            out.update(value)
        else:
            out[k] = list(value) if isinstance(value, tuple) else value
    return out
