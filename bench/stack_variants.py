"""The stack's rendered nginx.conf with parts of its Lua taken away, one edit each, for the
benchmarks that measure what each part costs (bench.proxy_cost_bench's steps, bench.proxy_bench's
Lua floor). `port` is the backend every request goes to once the route or the peer is a constant."""
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


def replace(conf: str, pattern: str, by: str) -> str:
    """The config with the first match of `pattern` replaced; a template that no longer has it
    stops the benchmark rather than measure a step that changed nothing."""
    out, n = re.subn(pattern, by, conf, count=1)
    if n != 1:
        raise RuntimeError(f"the rendered nginx.conf has no {pattern!r}: bench/stack_variants.py needs updating")
    return out
