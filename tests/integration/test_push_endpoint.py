"""nginx's push endpoint (dynamic mode), on a real nginx with the Lua module: only
proxy-reloader's credentials push, bad pushes are refused whole, and the good table stays.
The JSON contract is checked from both sides: what backends.py refuses, the Lua side refuses."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess

import pytest

from catalog.routing import Pool, Route
from proxy_reloader import backends
from proxy_reloader.nginx import Nginx
from proxy_reloader.push import PushClient, PushError, ensure_secret
from proxy_reloader.render import DYNAMIC, Settings, render
from tests.conftest import SESSION, TEST_LABEL
from testbed.http_backend import LoopbackHTTP, reply_json
from testbed.nginx_workers import worker_pids, worker_serving
from testbed.processes import wait_until

PORT = 18762
RESTARTED_PORT, FULL_PORT, WORKERS_PORT, HEAP_PORT = 18771, 18772, 18773, 18774     # nginxes of their own
# (18763 is compose's TLS port, on the other side)
GOOD = Route("demo", "/demo/", "", Pool("v1", (("127.0.0.1", 1111), ("127.0.0.1", 2222)), ("v1", "v1")))


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("push")
    n = Nginx(str(prefix), listen=f"127.0.0.1:{PORT}")
    settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path())
    secret = ensure_secret(settings.secret)
    n.apply(render([GOOD], str(n.prefix), n.listen, settings=settings))
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)
    wait_until(lambda: n.served_version(), 10, "nginx up")
    client = PushClient(settings.socket, secret)
    client.push(backends.push_body(10, {"demo": backends.entry(GOOD)}, full=True))
    yield n, settings, client
    os.kill(n.master_pid(), signal.SIGQUIT)


def raw_post(settings, body: bytes, secret: str = None):
    """A POST on the socket, as any local process could send it."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(settings.socket))
    head = f"POST /backends HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    if secret is not None:
        head += f"X-Proxystack-Secret: {secret}\r\n"
    s.sendall(head.encode() + b"\r\n" + body)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    s.close()
    return int(answer.split(b" ", 2)[1])


def table(client):
    return client.backends()


def test_the_pushed_table_is_what_the_workers_route_by(nginx):
    _, _, client = nginx
    assert table(client)["demo"]["stable"]["servers"] == [["127.0.0.1", 1111, "v1"], ["127.0.0.1", 2222, "v1"]]
    assert client.state()["generation"] == 10


def test_a_local_process_without_the_secret_is_refused(nginx):
    _, settings, client = nginx
    before = table(client)
    evil = json.dumps({"generation": 99, "services": {"demo": None}}).encode()
    assert raw_post(settings, evil) == 403
    assert raw_post(settings, evil, secret="0" * 64) == 403
    assert table(client) == before


def test_another_user_cannot_even_reach_the_socket(nginx):
    _, settings, _ = nginx
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             f"try:\n    s.connect({str(settings.socket)!r})\nexcept PermissionError:\n    sys.exit(13)\nsys.exit(0)\n")
    res = subprocess.run(["python3", "-c", probe], user=65534, group=65534, capture_output=True, timeout=20)
    assert res.returncode == 13, res.stderr


def test_a_hostile_test_image_on_the_host_network_cannot_push(nginx, docker_client, demo_images):
    n, settings, client = nginx
    before = table(client)
    script = (
        "import socket, urllib.request, json\n"
        "body = json.dumps({'generation': 99, 'services': {'demo': None}}).encode()\n"
        "results = []\n"
        "try:\n"
        f"    s = socket.socket(socket.AF_UNIX); s.connect({str(settings.socket)!r}); results.append('socket open')\n"
        "except OSError as e:\n"
        "    results.append('socket unreachable')\n"
        f"for url in ('http://127.0.0.1:{PORT}/backends', 'http://127.0.0.1:{PORT}/__proxystack/backends'):\n"
        "    try:\n"
        "        urllib.request.urlopen(urllib.request.Request(url, data=body, method='POST'), timeout=5)\n"
        "        results.append('accepted')\n"
        "    except urllib.error.HTTPError as e:\n"
        "        results.append(e.code)\n"
        "print(json.dumps(results))\n")
    out = docker_client.containers.run("demo-test:latest", entrypoint=["python3", "-c", script],
                                       network_mode="host", remove=True, labels={TEST_LABEL: SESSION})
    assert json.loads(out.decode().strip().splitlines()[-1]) == ["socket unreachable", 404, 404]
    assert table(client) == before


@pytest.mark.parametrize("body, why", [
    (b"{not json", "not JSON"),
    (b'{"generation": 50, "services": {"demo": {"service": "demo", "stable": {"version": "v1", '
     b'"servers": [["127.0.0.1", 70000, "v1"]]}, "weight": 0}}}', "port out of range"),
    (b'{"generation": 50, "services": {"de mo": null}}', "bad service name"),
    (b'{"generation": 50, "services": {"demo": {"service": "demo", "stable": {"version": "v1", '
     b'"servers": []}, "weight": 0}}}', "empty pool"),
    (b'{"generation": 50, "services": {"demo": {"service": "demo", "stable": null, "canary": {"version": "v2", '
     b'"servers": [["127.0.0.1", 1, "v2"]]}, "weight": 10}}}', "canary without stable"),
    (b'{"generation": 50, "services": {"demo": {"service": "demo", "stable": {"version": "v1", '
     b'"servers": [["127.0.0.1", 1, "v1;"]]}, "weight": 0}}}', "bad version"),
    (b'{"generation": 50, "services": {"demo": {"service": "demo", "stable": null, "weight": 101}}}', "weight"),
    (b'{"generation": -1, "services": {}}', "generation"),
])
def test_a_bad_push_is_refused_whole_by_both_sides_and_the_table_stays(nginx, body, why):
    _, settings, client = nginx
    before, generation = table(client), client.state()["generation"]
    with pytest.raises(PushError, match="400"):
        client.push(body)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.get("generation", 0) > 0:   # the Python side refuses the same entries
        with pytest.raises(ValueError):
            backends.push_body(parsed["generation"], parsed["services"], False)
    assert table(client) == before and client.state()["generation"] == generation


def test_an_oversized_or_stale_push_is_refused_and_the_table_stays(nginx):
    _, settings, client = nginx
    before = table(client)
    huge = b'{"generation": 60, "services": {}, "pad": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    with pytest.raises(PushError, match="413"):
        client.push(huge)
    with pytest.raises(PushError, match="409"):
        client.push(backends.push_body(5, {"demo": None}, False))
    assert table(client) == before


def test_a_restarted_nginx_routes_by_the_table_file_before_any_push(tmp_path):
    n = Nginx(str(tmp_path), listen=f"127.0.0.1:{RESTARTED_PORT}")
    settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path())
    secret = ensure_secret(settings.secret)
    n.apply(render([GOOD], str(n.prefix), n.listen, settings=settings))
    backends.write_table(settings.table, 77, {"demo": backends.entry(GOOD)})
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)
    try:
        wait_until(lambda: n.served_version(), 10, "nginx up")
        client = PushClient(settings.socket, secret)
        assert client.state()["generation"] == 77
        assert client.backends()["demo"]["stable"]["servers"][0] == ["127.0.0.1", 1111, "v1"]
    finally:
        os.kill(n.master_pid(), signal.SIGQUIT)


def test_a_table_that_no_longer_fits_is_said_and_the_table_stays_whole(tmp_path):
    """A full proxystack_backends zone: nginx makes room by evicting the entries used least
    lately. The push that needed it is answered with an error naming the option that sizes the
    zone (proxy-reloader shows it), and the list of the table's services is never lost (a
    shared dict frees a value before it finds room for a longer one)."""
    n = Nginx(str(tmp_path), listen=f"127.0.0.1:{FULL_PORT}")
    settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path(), table_size="64k")
    client = PushClient(settings.socket, ensure_secret(settings.secret))
    n.apply(render([], str(n.prefix), n.listen, settings=settings))
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)
    try:
        wait_until(lambda: n.served_version(), 10, "nginx up")

        def route(i, servers=8):
            pool = tuple(("127.0.0.1", 20000 + j) for j in range(servers))
            return Route(f"s{i:04d}", f"/s{i:04d}/", "", Pool("v1", pool, ("v1",) * len(pool)))

        generation, refusal, i = 100, None, 0
        while refusal is None and i < 400:
            generation += 1
            try:
                client.push(backends.push_body(generation, {f"s{i:04d}": backends.entry(route(i))}, full=False))
            except PushError as exc:
                refusal = str(exc)
            i += 1
        assert refusal is not None, "400 services fit in 64k: the test needs a smaller zone"
        assert "507" in refusal and "proxystack_backends is full" in refusal and "--table-size" in refusal, refusal
        newest = f"s{i - 1:04d}"
        assert newest in client.backends(), "the push that did not fit was not applied"
        # entries that grow while the zone is full: said each time, and the list of services stays
        listed = client.state()["services"]
        for grown in range(1, 6):
            generation += 1
            with pytest.raises(PushError, match="507"):
                client.push(backends.push_body(generation, {f"s{grown:04d}": backends.entry(route(grown, servers=60))},
                                               full=False))
            state = client.state()
            assert state["generation"] == generation and state["services"] >= listed, state
        assert newest in client.backends()
    finally:
        os.kill(n.master_pid(), signal.SIGQUIT)


def answers_by_worker(n, path="/demo/", tries=400):
    """Fresh connections to the proxy until each of its workers has answered at least once:
    worker pid -> the names of the backends that answered through it."""
    master = n.master_pid()
    workers = worker_pids(master)
    seen = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", WORKERS_PORT, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            pid = worker_serving(master, WORKERS_PORT, conn.sock.getsockname()[1])
        finally:
            conn.close()
        name = json.loads(body)["name"] if resp.status == 200 else resp.status
        seen.setdefault(pid, set()).add(name)
        if workers <= set(seen):
            return seen
    raise AssertionError(f"{tries} connections reached only workers {sorted(seen)} of {sorted(workers)}")


def test_every_worker_routes_by_a_push_at_once_and_so_do_the_workers_of_a_reload(tmp_path):
    """A push lands in one worker; the next request, whichever worker accepts it, is routed by it.
    After a reload (new workers, the table kept by nginx) the same, and for pushes after it."""
    names = {name: LoopbackHTTP(lambda h, name=name: reply_json(h, {"name": name})) for name in ("a", "b")}
    n = Nginx(str(tmp_path), listen=f"127.0.0.1:{WORKERS_PORT}")
    settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path(), workers="2")
    client = PushClient(settings.socket, ensure_secret(settings.secret))
    n.apply(render([], str(n.prefix), n.listen, settings=settings))
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)
    generation = 1000

    def serve_from(name):
        nonlocal generation
        generation += 1
        route = Route("demo", "/demo/", "", Pool("v1", (("127.0.0.1", names[name].port),), ("v1",)))
        client.push(backends.push_body(generation, {"demo": backends.entry(route)}, full=False))

    try:
        wait_until(lambda: n.served_version(), 10, "nginx up")
        for name in ("a", "b", "a", "b"):
            serve_from(name)
            seen = answers_by_worker(n)
            assert all(answered == {name} for answered in seen.values()), (name, seen)
        before = worker_pids(n.master_pid())
        n.reload()
        wait_until(lambda: len(worker_pids(n.master_pid()) - before) == 2
                   and not worker_pids(n.master_pid()) & before, 20, "the reload's workers alone")
        seen = answers_by_worker(n)
        assert all(answered == {"b"} for answered in seen.values()), seen
        for name in ("a", "b"):
            serve_from(name)
            seen = answers_by_worker(n)
            assert all(answered == {name} for answered in seen.values()), (name, seen)
    finally:
        os.kill(n.master_pid(), signal.SIGQUIT)
        for backend in names.values():
            backend.close()


def test_a_worker_gives_back_what_building_a_big_route_index_left_behind(tmp_path):
    """Building the route index of 5,000 routes (and decoding their push) leaves megabytes of
    garbage in the worker; within seconds its upkeep has collected it: the worker's Lua heap comes
    back near what is alive, and does again after the next route change."""
    backend = LoopbackHTTP(lambda h: reply_json(h, {"name": "fast"}))
    n = Nginx(str(tmp_path), listen=f"127.0.0.1:{HEAP_PORT}")
    settings = Settings(str(n.prefix), n.listen, mode=DYNAMIC, modules=n.modules_path(), workers="1")
    client = PushClient(settings.socket, ensure_secret(settings.secret), timeout=60)
    n.apply(render([], str(n.prefix), n.listen, settings=settings))
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)

    def table_of(count, path):
        names = [f"r{i}" for i in range(count - 1)] + ["fast"]
        return {name: backends.entry(Route(name, path if name == "fast" else f"/{name}/", "",
                                           Pool("v1", (("127.0.0.1", backend.port),), ("v1",))))
                for name in names}

    def served(path):
        conn = http.client.HTTPConnection("127.0.0.1", HEAP_PORT, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    try:
        wait_until(lambda: n.served_version(), 10, "nginx up")
        client.push(backends.push_body(1, table_of(10, "/fast/"), full=True))
        assert served("/fast/")[0] == 200
        wait_until(lambda: served("/r1/")[0] == 200 and client.state()["lua_heap_kb"] < 4096, 10,
                   "a worker with 10 routes")
        small = client.state()["lua_heap_kb"]
        for generation, path in ((2, "/fast/"), (3, "/fast-moved/")):
            client.push(backends.push_body(generation, table_of(5000, path), full=True))
            assert served(path)[0] == 200       # the index of 5,000 routes is built for this request
            wait_until(lambda: client.state()["lua_heap_kb"] < small + 4096, 10,
                       f"the worker's Lua heap near what is alive after the index of generation {generation}")
        assert served("/fast/")[0] == 404 and served("/r4321/")[0] == 200
    finally:
        os.kill(n.master_pid(), signal.SIGQUIT)
        backend.close()
