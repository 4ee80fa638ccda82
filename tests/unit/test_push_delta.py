"""What proxy-reloader pushes: the whole table once, then only the services that changed; the
whole table again after nginx restarts. (Real-nginx twin: tests/e2e/test_zero_reload.py and
tests/integration/test_push_endpoint.py.)"""
import json
from types import SimpleNamespace

from catalog.routing import Pool, Route
from proxy_reloader.render import DYNAMIC
from proxy_reloader.runner import Runner, RunnerOptions


class FakeNginxTable:
    """The push endpoint's behaviour: keeps what it is sent, reports generation and boot."""

    def __init__(self):
        self.boot, self.generation, self.bodies = "b1", 0, []

    def state(self):
        return {"generation": self.generation, "boot": self.boot}

    def push(self, body):
        data = json.loads(body)
        self.bodies.append(data)
        self.generation = data["generation"]
        return self.state()


def route(service, port):
    return Route(service, f"/{service}/", "", Pool("v1", (("127.0.0.1", port),), ("v1",)))


def runner(tmp_path, nginx_table):
    r = Runner(SimpleNamespace(disrupted_at=0.0), SimpleNamespace(prefix=str(tmp_path)),
               RunnerOptions(mode=DYNAMIC), push=nginx_table)
    return r


def test_the_first_push_is_whole_then_only_what_changed(tmp_path):
    table = FakeNginxTable()
    r = runner(tmp_path, table)
    assert r._push_table([route("a", 1), route("b", 2)])
    assert table.bodies[-1]["full"] is True and set(table.bodies[-1]["services"]) == {"a", "b"}
    assert r._push_table([route("a", 1), route("b", 3)])
    assert table.bodies[-1]["full"] is False and set(table.bodies[-1]["services"]) == {"b"}
    assert r._push_table([route("b", 3)])
    assert table.bodies[-1]["services"] == {"a": None}
    pushes = len(table.bodies)
    assert r._push_table([route("b", 3)]) and len(table.bodies) == pushes      # nothing changed: no push


def test_after_an_nginx_restart_the_whole_table_is_pushed_again(tmp_path):
    table = FakeNginxTable()
    r = runner(tmp_path, table)
    r._push_table([route("a", 1), route("b", 2)])
    table.boot, table.generation = "b2", 5                                     # a new nginx, the file's table
    assert r._push_table([route("a", 1), route("b", 2)])
    assert table.bodies[-1]["full"] is True and set(table.bodies[-1]["services"]) == {"a", "b"}
    assert table.bodies[-1]["generation"] > 5


def test_the_table_file_always_holds_the_whole_table(tmp_path):
    table = FakeNginxTable()
    r = runner(tmp_path, table)
    r._push_table([route("a", 1), route("b", 2)])
    r._push_table([route("a", 1), route("b", 3)])
    saved = json.loads((tmp_path / "backends.json").read_text())
    assert set(saved["services"]) == {"a", "b"} and saved["generation"] == table.generation
