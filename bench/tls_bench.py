"""HTTPS through the stack's nginx against a hand-written nginx TLS config with the same
certificate, every figure beside its goal, in one run:

1. keep-alive HTTPS requests/s against a fast backend (nginx `return 200` in a container),
   `wrk -t2 -c20`, the stack and the hand-written proxy side by side in each round, which of the
   two goes first swapped every round (goal: the median of the pairs' stack / hand-written >= 0.95);
   and, for what that ratio can reach, the Lua floor beside the hand-written proxy the same way:
   the hand-written proxy entering nginx's Lua module where the stack does, doing nothing there;
2. new TLS handshakes/s: the same with `Connection: close`, so every request is a new connection
   and a full handshake, where the stack picks the certificate in Lua per handshake (goal: >= 0.95);
3. a certificate changed -> served to a new handshake, from Consul (`cert add`'s write) and from
   the certificate folder, probed every 5 ms (goal: p50 <= 100 ms each; no reload).

    .venv/bin/python -m bench.tls_bench [--rounds 10] [--changes 20] [--check] [--json]
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

from bench.harness import bench_env, beside, command_line, exit_code, goals_table, percentile, progress, report, with_check, wrk_missing
from bench.proxy_bench import SAME_HEADERS, admit, fast_backend, wrk_costed
from bench.stack_variants import empty_lua_entries
from catalog import local_ca
from catalog.certificates import parse
from catalog.stores import Stores
from proxy_reloader.nginx import modules_path
from testbed.nginx_workers import WorkerGenerations
from testbed.processes import Proc, get_json, python_module, wait_until
from testbed.tls import fingerprint, make_cert, served_fingerprint

LISTEN, TLS, ADMIN, HAND, FLOOR = 18110, 18441, 19110, 18442, 18443

# The stack's TLS settings (proxy_reloader/templates/nginx-dynamic.conf.j2), the certificate a file.
HAND_CONF = """worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # logged as the stack's nginx logs: buffered, one write per 64 KiB or per second
    access_log {prefix}/logs/access.log combined buffer=64k flush=1s;
    server_tokens off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
    upstream fast {{ server 127.0.0.1:{port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{listen} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:hand_tls:10m;
        ssl_session_timeout 1d;
        ssl_session_tickets off;
        location /fast/ {{
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-Proto $scheme;
            {headers}
        }}
    }}
}}
"""


def hand_written_tls(env, port, cert, key, lua=False):
    """The hand-written TLS proxy; with `lua`, entering nginx's Lua module where the stack does,
    doing nothing there (the Lua floor), on its own port."""
    prefix = env.base / ("lua-floor-tls" if lua else "hand-tls")
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = HAND_CONF.format(prefix=prefix, port=port, listen=FLOOR if lua else HAND, cert=cert, key=key,
                            headers=SAME_HEADERS)
    (prefix / "nginx.conf").write_text(empty_lua_entries(conf, port, modules_path(nginx)) if lua else conf)
    subprocess.run([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], check=True, timeout=20)
    return prefix


def wrk_close(url, seconds=5, conns=20):
    """Like proxy_bench.wrk, every request on a new connection (a full TLS handshake each)."""
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "-H", "Connection: close", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return float(rps.group(1)) if rps else 0.0


def side_by_side(prefixes, say, rounds):
    """The stack beside the hand-written proxy, the pair's order swapped every round
    (bench.harness.beside): keep-alive requests/s (and the Lua floor's), then new handshakes/s."""
    urls = {"stack": f"https://127.0.0.1:{TLS}/fast/", "hand": f"https://127.0.0.1:{HAND}/fast/",
            "floor": f"https://127.0.0.1:{FLOOR}/fast/"}

    def keep_alive(name):
        rps, _, cpu = wrk_costed(urls[name], prefixes[name])
        say(f"    keep-alive, {name}: {rps:.0f} req/s, {cpu:.1f} us CPU per request")
        return rps, cpu

    def handshakes(name):
        rps = wrk_close(urls[name], seconds=3)
        say(f"    new handshakes, {name}: {rps:.0f} /s")
        return rps

    both = beside(keep_alive, "hand", ("stack", "floor"), rounds)
    keep, floor = both["stack"], both["floor"]
    fresh = beside(handshakes, "hand", ("stack",), rounds)["stack"]
    median = lambda values: round(statistics.median(values), 3)  # noqa: E731
    return {"keepalive_rps": {"stack": round(statistics.median(s[0] for s, _ in keep)),
                              "hand": round(statistics.median(h[0] for _, h in keep))},
            "handshakes_per_s": {"stack": round(statistics.median(s for s, _ in fresh)),
                                 "hand": round(statistics.median(h for _, h in fresh))},
            "cpu_us_per_request": {"stack": round(statistics.median(s[1] for s, _ in keep), 1),
                                   "hand": round(statistics.median(h[1] for _, h in keep), 1)},
            "keepalive_ratio": median(s[0] / h[0] for s, h in keep),
            "handshake_ratio": median(s / h for s, h in fresh),
            "keepalive_ratio_per_round": [round(s[0] / h[0], 3) for s, h in keep],
            "floor_ratio": median(f[0] / h[0] for f, h in floor),
            "floor_ratio_per_round": [round(f[0] / h[0], 3) for f, h in floor],
            "handshake_ratio_per_round": [round(s / h, 3) for s, h in fresh]}


def until_served(name, want, timeout=10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if served_fingerprint(TLS, name) == want:
                return (time.monotonic() - started) * 1000
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"certificate for {name} not served within {timeout} s")


def changes(env, stores, ca, folder, say, n):
    """ms from a certificate's write (Consul, then the folder) to a new handshake that gets it."""
    out = {"consul": [], "files": []}
    for i in range(n):
        chain, key = make_cert(ca, ["kv.bench.test"])
        started = time.monotonic()
        stores.certificates.put(parse("kv.bench.test", chain, key, "operator"))
        until_served("kv.bench.test", fingerprint(chain))
        out["consul"].append((time.monotonic() - started) * 1000)
        chain, key = make_cert(ca, ["file.bench.test"])
        (folder / "file.bench.test.key.new").write_text(key)
        (folder / "file.bench.test.crt.new").write_text(chain)
        started = time.monotonic()
        os.replace(folder / "file.bench.test.key.new", folder / "file.bench.test.key")
        os.replace(folder / "file.bench.test.crt.new", folder / "file.bench.test.crt")
        until_served("file.bench.test", fingerprint(chain))
        out["files"].append((time.monotonic() - started) * 1000)
        time.sleep(0.3)                    # apart, so each change is measured on its own
        if (i + 1) % 5 == 0:
            say(f"  change {i + 1}/{n}: Consul {out['consul'][-1]:.0f} ms, folder {out['files'][-1]:.0f} ms")
    return {src: {"p50": round(statistics.median(v), 1), "p95": round(percentile(v, 95), 1)} for src, v in out.items()}


def main(argv=None) -> int:
    p = with_check(command_line(__doc__))
    p.add_argument("--rounds", type=int, default=10, help="pairs of wrk runs (4 s each; 3 s for new handshakes), which proxy goes first swapped every round")
    p.add_argument("--changes", type=int, default=20, help="certificate changes per source")
    args = p.parse_args(argv)
    say = progress(args.json)
    if wrk_missing():
        return 2
    result = {}
    with bench_env() as env:
        stores = Stores.connect(env.consul.address, token=env.consul.management_token)
        ca, _ = local_ca.ensure(env.base / "ca")
        folder = env.base / "certs"
        folder.mkdir()
        chain, key = make_cert(ca, ["bench.test"])
        (folder / "default.crt").write_text(chain)
        (folder / "default.key").write_text(key)
        port = fast_backend(env)
        px = Proc("proxy-reloader", python_module(
            "proxy_reloader", "--consul", env.consul.address, "--consul-token-file",
            env.consul.token_file("proxy-reloader"), "--nginx-prefix", str(env.base / "px"), "--listen",
            f"127.0.0.1:{LISTEN}", "--tls-listen", f"127.0.0.1:{TLS}", "--admin", f"127.0.0.1:{ADMIN}",
            "--cert-dir", str(folder), "--exec"), env.base).start()
        hand = floor = None
        try:
            admit(stores, "fast", port)
            wait_until(lambda: "fast" in get_json(ADMIN, "/status")[1]["services"], 30, "the fast backend routed")
            wait_until(lambda: served_fingerprint(TLS, "bench.test") == fingerprint(chain), 30, "the default certificate")
            hand = hand_written_tls(env, port, folder / "default.crt", folder / "default.key")
            wait_until(lambda: served_fingerprint(HAND, "bench.test") == fingerprint(chain), 10, "the hand-written proxy")
            floor = hand_written_tls(env, port, folder / "default.crt", folder / "default.key", lua=True)
            wait_until(lambda: served_fingerprint(FLOOR, "bench.test") == fingerprint(chain), 10, "the Lua floor")
            prefixes = {"stack": env.base / "px", "hand": hand, "floor": floor}
            say(f"== keep-alive HTTPS and new handshakes, {args.rounds} rounds")
            result["throughput"] = side_by_side(prefixes, say, args.rounds)
            say(f"== {args.changes} certificate changes from Consul and from the folder")
            generations = WorkerGenerations(int((env.base / "px" / "nginx.pid").read_text()))
            generations.start()
            result["change_ms"] = changes(env, stores, ca, folder, say, args.changes)
            result["reloads"] = generations.finish()
            urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/status", timeout=2).read()
        finally:
            for prefix in (hand, floor):
                if prefix is not None:
                    os.kill(int((prefix / "nginx.pid").read_text()), 15)
            px.stop()
    t, c = result["throughput"], result["change_ms"]
    rows = [
        ("keep-alive HTTPS req/s, stack / hand-written", f"{t['keepalive_rps']['stack']} / {t['keepalive_rps']['hand']}", "", None),
        ("keep-alive HTTPS, stack / hand-written", t["keepalive_ratio"],
         ">= 0.95 (rounds " + ", ".join(map(str, t["keepalive_ratio_per_round"])) + ")", t["keepalive_ratio"] >= 0.95),
        ("the Lua floor: hand-written entering Lua as the stack does, doing nothing / hand-written, keep-alive",
         t["floor_ratio"], "(what the ratio above can reach; rounds " + ", ".join(map(str, t["floor_ratio_per_round"])) + ")",
         None),
        ("new TLS handshakes/s, stack / hand-written", f"{t['handshakes_per_s']['stack']} / {t['handshakes_per_s']['hand']}", "", None),
        ("new TLS handshakes, stack / hand-written", t["handshake_ratio"],
         ">= 0.95 (rounds " + ", ".join(map(str, t["handshake_ratio_per_round"])) + ")", t["handshake_ratio"] >= 0.95),
        ("workers' CPU per keep-alive request, stack / hand-written, us",
         f"{t['cpu_us_per_request']['stack']} / {t['cpu_us_per_request']['hand']}", "", None),
        ("certificate written to Consul -> new handshake gets it, p50 / p95 ms",
         f"{c['consul']['p50']} / {c['consul']['p95']}", "p50 <= 100", c["consul"]["p50"] <= 100),
        ("certificate file replaced -> new handshake gets it, p50 / p95 ms",
         f"{c['files']['p50']} / {c['files']['p95']}", "p50 <= 100", c["files"]["p50"] <= 100),
        (f"nginx reloads for {2 * args.changes} certificate changes", result["reloads"], "0", result["reloads"] == 0),
    ]
    result["goals"] = [{"measure": m, "figure": str(f), "goal": g, "met": ok} for m, f, g, ok in rows]
    report(result, args.json, "\n" + goals_table(rows))
    return exit_code(rows, args.check)


if __name__ == "__main__":
    sys.exit(main())
