"""What proxy-reloader pushes: the whole table once, then only the services that changed; the
whole table again after nginx restarts. (Real-nginx twin: tests/e2e/test_zero_reload.py and
tests/integration/test_push_endpoint.py.)"""
import json
import time
from types import SimpleNamespace

from catalog.routing import Pool, Route
from proxy_reloader.push import PushError
from proxy_reloader.render import DYNAMIC, RELOAD
from proxy_reloader.runner import Runner, RunnerOptions
from tests.support.fakes import FakeNginx


class FakeNginxTable:
    """The push endpoint's behaviour: keeps what it is sent, reports generation and boot.
    `down`: unreachable (PushError on every call); `lagging`: takes pushes but the workers go on
    reporting the old generation. `asked` counts the state reads."""

    def __init__(self, generation=0):
        self.boot, self.generation, self.bodies = "b1", generation, []
        self.down = self.lagging = False
        self.asked = 0

    def state(self):
        self.asked += 1
        if self.down:
            raise PushError("nginx's push endpoint admin/push.sock is unreachable: connection refused")
        return {"generation": self.generation, "boot": self.boot}

    def push(self, body):
        if self.down:
            raise PushError("nginx's push endpoint admin/push.sock is unreachable: connection refused")
        data = json.loads(body)
        self.bodies.append(data)
        if not self.lagging:
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


# --- through the apply step: what nginx, the status endpoint and the check see -------------

def dynamic(tmp_path, nginx_table, **options):
    return Runner(SimpleNamespace(disrupted_at=0.0), FakeNginx(tmp_path), RunnerOptions(mode=DYNAMIC, **options),
                  push=nginx_table)


def serve(r, *routes):
    """The computed routes are these; one apply."""
    r.computed = {x.service: x for x in routes}
    r.invalid = {}
    r._apply()


def servers(r, service):
    return r.status()["services"][service]["stable"]["servers"]


def test_a_failed_push_keeps_the_old_table_and_once_nginx_answers_everything_is_pushed(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table)
    serve(r, route("a", 1), route("b", 2))
    confirmed = dict(r.table)
    table.down = True
    serve(r, route("a", 1), route("b", 3))
    status = r.status()
    assert status["push_error"] == "nginx's push endpoint admin/push.sock is unreachable: connection refused"
    assert status["last_error"] == "push: " + status["push_error"]
    assert servers(r, "b") == ["127.0.0.1:2"], "the status shows what the workers still route by"
    assert r.table == confirmed
    r.recheck.cancel()
    table.down = False
    serve(r, route("a", 1), route("b", 3))
    assert table.bodies[-1]["full"] is True and set(table.bodies[-1]["services"]) == {"a", "b"}
    assert servers(r, "b") == ["127.0.0.1:3"]
    assert r.status()["push_error"] is None and r.status()["last_error"] is None


def test_a_failed_push_is_retried_within_a_second_without_a_new_change(tmp_path):
    table = FakeNginxTable()
    table.down = True
    r = dynamic(tmp_path, table)
    serve(r, route("a", 1))
    r.dirty.clear()
    assert r.dirty.wait(1.5), "the runner applies again by itself"


def test_workers_that_do_not_report_the_pushed_generation_fail_the_push(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table)
    serve(r, route("a", 1))
    table.lagging = True
    serve(r, route("a", 2))
    pushed = table.bodies[-1]["generation"]
    assert r.status()["push_error"] == f"pushed generation {pushed}, but the workers report {table.generation}"
    assert servers(r, "a") == ["127.0.0.1:1"]
    r.recheck.cancel()


def test_an_entry_that_breaks_the_contract_refuses_the_whole_push(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table)
    serve(r, route("a", 1))
    pushes = len(table.bodies)
    broken = Route("b", "/b/", "", Pool("v1", (("127.0.0.1", 2),), ("v1",)),
                   canary=Pool("v2", (("127.0.0.1", 3),), ("v2",)), weight=150)
    saved = (tmp_path / "backends.json").read_text()
    serve(r, route("a", 5), broken)                 # raised out of the runner's loop before the fix
    assert len(table.bodies) == pushes and r.status()["push_error"] == "b.weight must be an integer 0..100"
    assert servers(r, "a") == ["127.0.0.1:1"] and "b" not in r.status()["services"]
    assert (tmp_path / "backends.json").read_text() == saved, "an nginx start still loads the file"
    r.recheck.cancel()


def test_when_nginx_reports_an_older_generation_the_whole_table_is_pushed(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table)
    r._push_table([route("a", 1), route("b", 2)])
    ours = table.generation
    table.generation = ours - 1                                 # same boot, but behind what we pushed
    assert r._push_table([route("a", 1), route("b", 2)])
    assert table.bodies[-1]["full"] is True and set(table.bodies[-1]["services"]) == {"a", "b"}
    assert table.bodies[-1]["generation"] > ours


def test_generations_only_go_up_even_when_nginx_is_ahead_of_the_clock(tmp_path):
    table = FakeNginxTable(generation=10 ** 15)
    r = dynamic(tmp_path, table)
    r._push_table([route("a", 1)])
    r._push_table([route("a", 2)])
    assert [b["generation"] for b in table.bodies] == [10 ** 15 + 1, 10 ** 15 + 2]
    assert r.status()["generation"] == 10 ** 15 + 2


def test_generations_follow_the_clock_and_increase_each_push(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table)
    before = int(time.time() * 1000)
    for port in range(1, 4):
        r._push_table([route("a", port)])
    generations = [b["generation"] for b in table.bodies]
    assert generations == sorted(set(generations)) and before <= generations[0] <= time.time() * 1000


def test_the_table_file_is_written_even_when_nginx_is_down(tmp_path):
    table = FakeNginxTable()
    table.down = True
    r = dynamic(tmp_path, table)
    assert r._push_table([route("a", 1), route("b", 2)]) is False
    saved = json.loads((tmp_path / "backends.json").read_text())
    assert saved["generation"] == 1 and saved["full"] is True and set(saved["services"]) == {"a", "b"}
    r.recheck.cancel()


def test_status_in_dynamic_mode_shows_the_pushes(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table)
    status = r.status()
    assert status["mode"] == "dynamic"
    assert (status["pushes"], status["last_push"], status["generation"], status["served_generation"],
            status["push_error"]) == (0, None, 0, 0, None)
    before = time.time()
    serve(r, route("a", 1))
    serve(r, route("a", 2))
    status = r.status()
    assert status["pushes"] == 2 and before <= status["last_push"] <= time.time()
    assert status["generation"] == status["served_generation"] == table.generation
    assert status["services"]["a"]["stable"]["servers"] == ["127.0.0.1:2"]
    table.down = True
    assert r.status()["served_generation"] is None


def test_idle_the_runner_notices_an_nginx_restart(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table, restart_check=0.0)
    serve(r, route("a", 1))
    r.dirty.clear()
    r._idle()
    assert not r.dirty.is_set(), "same nginx: nothing to do"
    table.boot = "b2"
    r._idle()
    assert r.dirty.is_set()
    r.dirty.clear()
    table.down = True
    r._idle()
    assert not r.dirty.is_set(), "nginx down: its start reads the table file"


def test_idle_before_the_first_push_nginx_is_asked_for_its_table(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table, restart_check=0.0)
    r._idle()                                     # Consul has not answered yet
    assert table.asked == 1 and r.dirty.is_set()


def test_idle_nginx_is_asked_only_every_restart_check(tmp_path):
    table = FakeNginxTable()
    r = dynamic(tmp_path, table, restart_check=60.0)
    serve(r, route("a", 1))                      # asks nginx
    asked = table.asked
    table.boot = "b2"
    r._idle()
    r._idle()
    assert table.asked == asked and not r.dirty.is_set()


def test_idle_in_reload_mode_nginx_is_not_asked(tmp_path):
    table = FakeNginxTable()
    r = Runner(SimpleNamespace(disrupted_at=0.0), FakeNginx(tmp_path), RunnerOptions(mode=RELOAD, restart_check=0.0),
               push=table)
    r._idle()
    assert table.asked == 0


def test_certificates_and_challenges_go_whole_first_then_only_what_changed_and_the_file_has_all(tmp_path):
    pem = lambda tag: {"cert": f"-----BEGIN CERTIFICATE-----\n{tag}\n", "key": f"-----BEGIN KEY-----\n{tag}\n"}  # noqa: E731
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    book = SimpleNamespace(certs={"a.test": pem("a1"), "b.test": pem("b1")}, challenges={token: token + ".k1"})
    book.for_push = lambda: dict(book.certs)
    table = FakeNginxTable()
    r = runner(tmp_path, table)
    r.certificates = book
    assert r._push_table([route("a", 1)])
    first = table.bodies[-1]
    assert first["full"] and first["certificates"] == book.certs and first["challenges"] == book.challenges
    book.certs = {"a.test": pem("a2"), "b.test": pem("b1")}                      # a.test rotated
    assert r._push_table([route("a", 1)])
    assert table.bodies[-1]["certificates"] == {"a.test": pem("a2")} and table.bodies[-1]["services"] == {}
    assert "challenges" not in table.bodies[-1], "no challenge changed: none sent"
    book.certs, book.challenges = {"a.test": pem("a2")}, {}                       # b.test removed, answer done
    assert r._push_table([route("a", 1)])
    assert table.bodies[-1]["certificates"] == {"b.test": None} and table.bodies[-1]["challenges"] == {token: None}
    pushes = len(table.bodies)
    assert r._push_table([route("a", 1)]) and len(table.bodies) == pushes, "nothing changed: no push"
    book.challenges = {token: token + ".k2"}
    assert r._push_table([route("a", 1)])
    assert table.bodies[-1]["challenges"] == {token: token + ".k2"} and "certificates" not in table.bodies[-1]
    saved = json.loads((tmp_path / "backends.json").read_text())
    assert saved["certificates"] == {"a.test": pem("a2")} and saved["challenges"] == {token: token + ".k2"}
    assert saved["generation"] == table.generation == table.bodies[-1]["generation"]
