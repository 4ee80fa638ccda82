"""The stack's rendered nginx.conf with parts of its Lua taken away, one edit each, for the
benchmarks that measure what each part costs (bench.proxy_cost_bench's steps); and the
hand-written proxy with nginx's Lua module entered where the stack enters it, doing nothing (the
Lua floor of bench.proxy_bench, bench.tls_bench and bench.proxy_cost_bench). `port` is the backend
every request goes to once the route or the peer is a constant."""
from __future__ import annotations

import re


def no_metrics(conf: str, port: int) -> str:
    return replace(conf, r"(proxy_pass http://proxystack_backend;\n)\s+log_by_lua_block \{ metrics\.log\(\) \}\n", r"\1")


def constant_route(conf: str, port: int) -> str:
    return replace(conf, r"set_by_lua \$proxystack_route 'return router\.request\(\"http\", \"http\", \.\.\.\)'\s+[^;]*;",
                   "set_by_lua $proxystack_route 'return \"fast\"';")


def constant_peer(conf: str, port: int) -> str:
    conf = replace(conf, r"balancer_by_lua_block \{ router\.balance\(\) \}",
                   f'balancer_by_lua_block {{ proxystack_peer.set_current_peer("127.0.0.1", {port}) }}')
    return replace(conf, r"init_by_lua_block \{\n", 'init_by_lua_block {\n        proxystack_peer = require "ngx.balancer"\n')


def static_upstream(conf: str, port: int) -> str:
    conf = replace(conf, r"    upstream proxystack_backend \{",
                   f"    upstream static_backend {{ server 127.0.0.1:{port}; keepalive 64; }}\n    upstream proxystack_backend {{")
    return replace(conf, r"(error_page 504 = @proxystack_504;\s+)proxy_pass http://proxystack_backend;",
                   r"\1proxy_pass http://static_backend;")


def empty_lua_entries(conf: str, port: int, modules: str) -> str:
    """A hand-written proxy's config (bench.proxy_bench.HAND_CONF, bench.tls_bench.HAND_CONF)
    entering nginx's Lua module at each of the three points where the stack enters it, each
    doing none of the stack's work: a set_by_lua that returns a constant, a Lua balancer that
    sets the backend as its peer, an empty log_by_lua. Beside the hand-written proxy it shows
    how near any proxy whose route, peer and per-request metrics live in Lua can come to it."""
    conf = f"load_module {modules}/ndk_http_module.so;\nload_module {modules}/ngx_http_lua_module.so;\n" + conf
    conf = replace(conf, r"(\n    server_tokens off;\n)",
                   r"\1    init_by_lua_block { proxystack_peer = require 'ngx.balancer' }\n")
    conf = replace(conf, rf"upstream fast \{{ server 127\.0\.0\.1:{port}; keepalive 64; \}}",
                   f"upstream fast {{ server 0.0.0.1; balancer_by_lua_block "
                   f"{{ proxystack_peer.set_current_peer('127.0.0.1', {port}) }} keepalive 64; }}")
    return replace(conf, r"(\n( +)proxy_pass http://fast;\n)",
                   "\\1\\2set_by_lua $proxystack_route 'return \"fast\"';\n\\2log_by_lua_block { }\n")


def replace(conf: str, pattern: str, by: str) -> str:
    """The config with the first match of `pattern` replaced; a template that no longer has it
    stops the benchmark rather than measure a step that changed nothing."""
    out, n = re.subn(pattern, by, conf, count=1)
    if n != 1:
        raise RuntimeError(f"the rendered nginx.conf has no {pattern!r}: bench/stack_variants.py needs updating")
    return out
