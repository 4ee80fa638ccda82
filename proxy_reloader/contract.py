"""The push contract, read from the file both sides read (lua/proxystack/contract.json).

`check_push` here and `contract.check_push` in nginx's Lua side apply the same rules to the
same body and answer with the same reason; tests/unit/test_push_contract.py holds them to it
with one list of cases, and holds the name rules to catalog.validation's.
"""
from __future__ import annotations

import ipaddress
import json
import math
from pathlib import Path
from typing import Any, Optional, Tuple

CONTRACT_FILE = Path(__file__).parent / "lua" / "proxystack" / "contract.json"
CONTRACT = json.loads(CONTRACT_FILE.read_text())


def char_set(spec: str) -> frozenset:
    """'a-z0-9._-' -> the characters it names: x-y is a range, anything else itself."""
    out, i = set(), 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            out.update(chr(c) for c in range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            out.add(spec[i])
            i += 1
    return frozenset(out)


_NAMES = {kind: (char_set(r["first"]), char_set(r["chars"]), char_set(r.get("last", r["chars"])), r["max"])
          for kind, r in CONTRACT["names"].items()}


def name_ok(kind: str, value: Any) -> bool:
    first, chars, last, most = _NAMES[kind]
    return (isinstance(value, str) and 1 <= len(value) <= most and value[0] in first
            and value[-1] in last and all(c in chars for c in value))


def _int_in(value: Any, bounds) -> bool:
    """A JSON number with no fraction (10 and 10.0 alike, as Lua sees them), within bounds."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value == int(value) and bounds[0] <= value <= bounds[1])


def check_pool(pool: Any, where: str) -> Optional[str]:
    if pool is None:
        return None
    if not isinstance(pool, dict):
        return f"{where} must be an object or null"
    version = pool.get("version")
    if not (version == CONTRACT["mixed_version"] or name_ok("version", version)):
        return f"{where}.version is not a valid version"
    servers = pool.get("servers")
    least, most = CONTRACT["servers"]
    if not isinstance(servers, list) or not least <= len(servers) <= most:
        return f"{where}.servers must list {least} to {most} servers"
    for i, s in enumerate(servers, 1):
        if not (isinstance(s, list) and len(s) == 3 and name_ok("address", s[0])
                and _int_in(s[1], CONTRACT["port"]) and name_ok("version", s[2])):
            return f"{where}.servers[{i}] must be [address, port, version]"
    return None


def network_ok(value: Any) -> bool:
    """An IPv4 or IPv6 address or network (no host bits set, IPv6 written in hex only)."""
    if not name_ok("network", value) or (":" in value and "." in value):
        return False
    try:
        ipaddress.ip_network(value, strict=True)
        return True
    except ValueError:
        return False


def host_ok(value: Any) -> bool:
    """An exact host name, or *.DOMAIN for every name under DOMAIN."""
    if isinstance(value, str) and value.startswith("*."):
        value = value[2:]
    return name_ok("host", value)


def _number_in(value: Any, bounds, whole: bool) -> bool:
    if whole:
        return _int_in(value, bounds)
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and bounds[0] <= value <= bounds[1])


def check_route(route: Any, where: str) -> Optional[str]:
    rules = CONTRACT["route"]
    if not isinstance(route, dict):
        return f"{where} must be an object"
    for key in sorted(route):
        if key not in ("path", "hosts", "allow", "rate_limit", "protocol", "https") and key not in rules["flags"] \
                and key not in rules["numbers"]:
            return f"{where}.{key} is not a route setting"
    if not name_ok("path", route.get("path")) or "//" in route["path"]:
        return f"{where}.path must be a path of plain segments ending in /"
    hosts, (least, most) = route.get("hosts", []), rules["hosts"]
    if not isinstance(hosts, list) or not least <= len(hosts) <= most or not all(host_ok(h) for h in hosts):
        return f"{where}.hosts must list {least} to {most} host names"
    for flag in rules["flags"]:
        if flag in route and not isinstance(route[flag], bool):
            return f"{where}.{flag} must be true or false"
    for key in sorted(rules["numbers"]):
        low, high = rules["numbers"][key]
        if key in route and not _number_in(route[key], rules["numbers"][key], key in rules["integers"]):
            return f"{where}.{key} must be a number {low}..{high}"
    if "protocol" in route and route["protocol"] not in rules["protocol"]:
        return f"{where}.protocol must be one of " + ", ".join(rules["protocol"])
    if "https" in route and route["https"] not in rules["https"]:
        return f"{where}.https must be one of " + ", ".join(rules["https"])
    if "rate_limit" in route:
        limit, bounds = route["rate_limit"], rules["rate_limit"]
        if not (isinstance(limit, dict) and set(limit) == {"rate", "burst"}
                and _number_in(limit["rate"], bounds["rate"], False) and _int_in(limit["burst"], bounds["burst"])):
            return (f"{where}.rate_limit must be {{rate: {bounds['rate'][0]}..{bounds['rate'][1]}, "
                    f"burst: {bounds['burst'][0]}..{bounds['burst'][1]}}}")
    if "allow" in route:
        allow, (least, most) = route["allow"], rules["allow"]
        if not isinstance(allow, list) or not least <= len(allow) <= most:
            return f"{where}.allow must list {least} to {most} networks"
        for i, net in enumerate(allow, 1):
            if not network_ok(net):
                return f"{where}.allow[{i}] is not an address or network"
    return None


def check_entry(name: Any, entry: Any) -> Optional[str]:
    """None when the entry keeps the contract, else the reason (as the Lua side words it)."""
    if not name_ok("service", name):
        return f"service name {name} is not valid"
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return f"{name}: entry must be an object or null"
    if entry.get("service") != name:
        return f"{name}: entry.service must be {name}"
    for side in ("stable", "canary"):
        reason = check_pool(entry.get(side), f"{name}.{side}")
        if reason:
            return reason
    low, high = CONTRACT["weight"]
    if not _int_in(entry.get("weight"), CONTRACT["weight"]):
        return f"{name}.weight must be an integer {low}..{high}"
    if entry.get("canary") is not None and entry.get("stable") is None:
        return f"{name}: a canary needs a stable pool"
    if "route" in entry:
        return check_route(entry["route"], f"{name}.route")
    return None


def certificate_name_ok(name: Any) -> bool:
    return name == "default" or host_ok(name)


def check_certificate(name: Any, cert: Any) -> Optional[str]:
    """None when a pushed certificate keeps the contract's shape (nginx parses it too)."""
    if not certificate_name_ok(name):
        return f"certificate name {name} is not valid"
    if cert is None:
        return None
    rules = CONTRACT["certificates"]
    if not isinstance(cert, dict) or set(cert) != {"cert", "key"}:
        return f"certificate {name} must be {{cert, key}} or null"
    for part in ("cert", "key"):
        pem = cert[part]
        if not (isinstance(pem, str) and rules["pem"][0] <= len(pem) <= rules["pem"][1]
                and pem.startswith(rules["begins"])):
            return f"certificate {name}: {part} must be PEM text of at most {rules['pem'][1]} bytes"
    return None


def check_push(body: Any) -> Tuple[bool, Optional[str]]:
    """(True, None) for a push nginx takes, else (False, reason): one bad entry refuses all."""
    if not isinstance(body, dict):
        return False, "body must be a JSON object"
    if not _int_in(body.get("generation"), CONTRACT["generation"]):
        return False, "generation must be a positive integer"
    if not isinstance(body.get("services"), dict):
        return False, "services must be an object"
    for name, entry in sorted(body["services"].items()):
        reason = check_entry(name, entry)
        if reason:
            return False, reason
    certs = body.get("certificates", {})
    if not isinstance(certs, dict) or len(certs) > CONTRACT["certificates"]["count"][1]:
        return False, f"certificates must be an object of at most {CONTRACT['certificates']['count'][1]}"
    for name, cert in sorted(certs.items()):
        reason = check_certificate(name, cert)
        if reason:
            return False, reason
    challenges = body.get("challenges", {})
    if not isinstance(challenges, dict) or len(challenges) > CONTRACT["challenges"]["count"][1]:
        return False, f"challenges must be an object of at most {CONTRACT['challenges']['count'][1]}"
    for token, answer in sorted(challenges.items()):
        if not name_ok("acme_token", token) or not (answer is None or name_ok("key_authorization", answer)):
            return False, f"challenge {token}: must be TOKEN: KEY_AUTHORIZATION or null"
    return True, None
