"""The allow-list every externally supplied value passes before it is stored or rendered.

Each field has one pattern that says what is allowed (never a list of what is forbidden), so a
value that could break out of an nginx directive, a JSON document or a log line cannot get in.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from .errors import BadInput
from .model import MODES, Analysis, RoutingPolicy, Scaling


class InvalidValue(BadInput):
    """A value failed its field's rule. `str()` names the field, the value and the rule."""

    def __init__(self, field: str, value: Any, rule: str):
        self.field, self.value, self.rule = field, value, rule
        shown = repr(value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "...")
        super().__init__(f"{field}={shown} is invalid: {rule}")


_RULES = {
    "service": (re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"),
                "a DNS label: lower-case letters, digits and '-', at most 63, not starting or ending with '-'"),
    "version": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
                "letters, digits, '.', '_' and '-', at most 64, starting with a letter or digit"),
    "proxy_path": (re.compile(r"/(?:[A-Za-z0-9._~-]{1,64}/){0,8}"),
                   "an absolute path of plain segments ending in '/', such as /demo/ or /api/demo/"),
    "proxy_host": (re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"),
                   "a lower-case DNS host name, such as demo.example.com"),
    "image": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}"),
              "a Docker image reference: letters, digits and . _ / : @ -, at most 255"),
    "tag": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,62}"),
            "letters, digits and . _ = -, at most 63"),
    "meta_key": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"),
                 "letters, digits, '_' and '-', at most 64"),
    "meta_value": (re.compile(r"[A-Za-z0-9 ._:/@=+,-]{0,512}"),
                   "letters, digits, spaces and . _ : / @ = + , -, at most 512"),
    "container_name": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"),
                       "a Docker container name"),
    "address": (re.compile(r"(?:\d{1,3}\.){3}\d{1,3}|[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?"),
                "an IPv4 address or a host name"),
    "check_path": (re.compile(r"/[A-Za-z0-9._~/-]{0,200}"),
                   "an absolute URL path of letters, digits and . _ ~ / -"),
    "flag": (re.compile(r"true|false"), "true or false"),
    "duration": (re.compile(r"[1-9][0-9]{0,4}(?:ms|s|m)"),
                 "a whole number followed by ms, s or m, such as 5s"),
}


_MAX_LEN = {"proxy_host": 253}


def check(field: str, value: Any, rule: str | None = None) -> str:
    """Return `value` when it matches the rule for `field` (or `rule`), else raise InvalidValue."""
    pattern, text = _RULES[rule or field]
    limit = _MAX_LEN.get(rule or field)
    if not isinstance(value, str) or not pattern.fullmatch(value) or (limit and len(value) > limit):
        raise InvalidValue(field, value, text + (f", at most {limit} characters" if limit else ""))
    return value


def valid(rule: str, value: Any) -> bool:
    try:
        check(rule, value)
        return True
    except InvalidValue:
        return False


def check_port(field: str, value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise InvalidValue(field, value, "a whole number from 1 to 65535") from None
    if not 1 <= port <= 65535 or str(value).strip() != str(port):
        raise InvalidValue(field, value, "a whole number from 1 to 65535")
    return port


def parse_policy(raw: str) -> RoutingPolicy:
    """A routing policy as stored in KV (JSON text); InvalidValue names what is wrong."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidValue("policy", raw, "a JSON routing policy") from None
    return validate_policy(data)


def validate_policy(data: Mapping[str, Any]) -> RoutingPolicy:
    """Parse a routing policy read from KV; raise InvalidValue naming the first bad field."""
    if not isinstance(data, Mapping):
        raise InvalidValue("policy", data, "a JSON object")
    service = check("service", data.get("service"))
    versions = {k: data.get(k) or "" for k in ("stable", "canary", "previous", "aborted")}
    for key, value in versions.items():
        if value:
            check(key, value, "version")
    weight = data.get("weight", 0)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
        raise InvalidValue("weight", weight, "a whole number from 0 to 100")
    mode = data.get("mode", MODES[0])
    if mode not in MODES:
        raise InvalidValue("mode", mode, "'auto', 'manual' or 'progressive'")
    updated = data.get("updated", 0.0)
    if not isinstance(updated, (int, float)):
        raise InvalidValue("updated", updated, "a number of seconds since the epoch")
    return RoutingPolicy(service=service, weight=weight, mode=mode, updated=float(updated),
                         analysis=validate_analysis(data.get("analysis") or {}), **versions)


# Each analysis setting: (whole number?, lowest, highest, the rule in words).
ANALYSIS_RULES = {
    "step": (True, 1, 100, "a whole number of percent from 1 to 100"),
    "max_weight": (True, 1, 100, "a whole number of percent from 1 to 100, at least step"),
    "interval": (False, 1, 3600, "seconds from 1 to 3600"),
    "threshold": (True, 1, 100, "a whole number of failed checks from 1 to 100"),
    "min_requests": (True, 0, 1_000_000, "a whole number of requests from 0 to 1000000"),
    "success_rate": (False, 0, 100, "a percentage from 0 to 100"),
    "p99_ms": (False, 1, 600_000, "milliseconds from 1 to 600000"),
}


def _parse_settings(label: str, text: str, rules: dict, example: str) -> dict:
    """'key=number,key=number' -> {key: number}, each key known, each number of its kind and
    within its rule's range; InvalidValue names the first bad one."""
    settings: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in rules:
            raise InvalidValue(label, text, "comma-separated SETTING=NUMBER, the settings being "
                               + ", ".join(rules) + f" (for example {example})")
        whole, low, high, rule = rules[key]
        field = f"{label.rsplit('.', 1)[-1]}.{key}"
        try:
            value = int(raw) if whole else float(raw)
        except ValueError:
            raise InvalidValue(field, raw.strip(), rule) from None
        if not low <= value <= high:           # NaN fails this too
            raise InvalidValue(field, value, rule)
        settings[key] = value
    return settings


def parse_analysis_label(text: str) -> dict:
    """'step=10,interval=5' (the gatekeeper.analysis label) -> the settings it names, checked;
    InvalidValue names the first bad one."""
    settings = _parse_settings("gatekeeper.analysis", text, ANALYSIS_RULES, "step=10,interval=5")
    validate_analysis(settings)
    return settings


def validate_analysis(data: Mapping[str, Any]) -> Analysis:
    """Progressive mode's settings (a partial mapping takes the defaults for the rest);
    InvalidValue names the first bad one and its rule."""
    if not isinstance(data, Mapping):
        raise InvalidValue("analysis", data, "a JSON object of progressive-mode settings")
    unknown = sorted(set(data) - set(ANALYSIS_RULES))
    if unknown:
        raise InvalidValue(f"analysis.{unknown[0]}", data[unknown[0]],
                           "not a setting; the settings are " + ", ".join(ANALYSIS_RULES))
    values = {}
    for key, (whole, low, high, rule) in ANALYSIS_RULES.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)) \
                or not low <= value <= high:          # NaN fails this too
            raise InvalidValue(f"analysis.{key}", value, rule)
        values[key] = value if whole else float(value)
    analysis = Analysis(**values)
    if analysis.max_weight < analysis.step:
        raise InvalidValue("analysis.max_weight", analysis.max_weight, ANALYSIS_RULES["max_weight"][3])
    return analysis


SCALE_RULES = {
    "min": (True, 0, 1000, "a whole number of replicas from 0 to 1000"),
    "max": (True, 1, 1000, "a whole number of replicas from 1 to 1000, at least min"),
    "rps": (False, 0, 1_000_000, "requests per second per admitted instance, 0 (not by load) to 1000000"),
    "p99": (False, 0, 600_000, "milliseconds, 0 (not by latency) to 600000"),
    "cooldown": (False, 0, 86400, "seconds from 0 to 86400"),
    "step": (True, 1, 1000, "a whole number of replicas from 1 to 1000"),
    "window": (False, 2, 3600, "seconds from 2 to 3600"),
}


def parse_scale_label(text: str) -> Scaling:
    """'min=1,max=5,rps=50' (the gatekeeper.scale label of a Swarm service) -> Scaling, the
    defaults for what it leaves out; InvalidValue names the first bad setting and its rule."""
    settings = _parse_settings("gatekeeper.scale", text, SCALE_RULES, "min=1,max=5,rps=50")
    scaling = Scaling(**{("p99_ms" if k == "p99" else k): v for k, v in settings.items()})
    if scaling.max < scaling.min:
        raise InvalidValue("scale.max", scaling.max, SCALE_RULES["max"][3])
    return scaling
