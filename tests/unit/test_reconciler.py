"""The daemon's pass: one read of the catalog, each service handed to every reconciler in order,
then each finishes the pass; the earliest decision due wakes the daemon."""
from gatekeeper.reconciler import Reconciler, next_due, run_pass


class Recorder(Reconciler):
    def __init__(self, name, log, due=None):
        self.name, self.log, self.due = name, log, due

    def reconcile(self, service, instances):
        self.log.append((self.name, service, len(instances)))

    def end_pass(self, snapshot):
        self.log.append((self.name, "end", sorted(snapshot)))

    def next_due(self):
        return self.due


def test_each_service_goes_through_every_reconciler_in_order_then_each_ends_the_pass():
    log = []
    run_pass({"a": [1, 2], "b": [3]}, [Recorder("gate", log), Recorder("promoter", log)])
    assert log == [("gate", "a", 2), ("promoter", "a", 2), ("gate", "b", 1), ("promoter", "b", 1),
                   ("gate", "end", ["a", "b"]), ("promoter", "end", ["a", "b"])]


def test_the_earliest_decision_due_wakes_the_daemon_and_none_means_none():
    assert next_due([Recorder("a", [], 7.0), Recorder("b", [], None), Recorder("c", [], 3.0)]) == 3.0
    assert next_due([Recorder("a", []), Reconciler()]) is None


class Leader:
    def __init__(self, leading):
        import threading
        self.is_leader = threading.Event()
        if leading:
            self.is_leader.set()


class Catalog:
    """`instances.of` as the daemon calls it for new arrivals; counts the reads."""

    def __init__(self):
        self.reads = []

    def of(self, service):
        self.reads.append(service)
        return [type("RI", (), {"instance": type("I", (), {"id": f"{service}:{n}"})()})() for n in range(3)]

    def wait_checks(self, index, wait):
        raise AssertionError("not watched here")


def gate_checks(*ids):
    return [{"CheckID": "serfHealth", "ServiceID": ""}] + [
        {"CheckID": f"{i}:gate", "ServiceID": i, "ServiceName": i.split(":")[0]} for i in ids] + [
        {"CheckID": f"{i}:docker-health", "ServiceID": i, "ServiceName": i.split(":")[0]} for i in ids]


class Arrivals(Reconciler):
    def __init__(self):
        self.shown = []

    def arrived(self, service, instances):
        self.shown.append((service, sorted(ri.instance.id for ri in instances)))


def test_the_leader_shows_a_few_new_instances_before_its_pass_and_leaves_a_bulk_import_to_the_pass():
    from gatekeeper.daemon import ARRIVALS_AT_ONCE, Daemon
    catalog, seen = Catalog(), Arrivals()
    daemon = Daemon(catalog, None, [seen], Leader(True))
    daemon._show_arrivals(gate_checks("a:0"))                    # the first answer: nothing is new yet
    daemon._show_arrivals(gate_checks("a:0", "a:1", "b:2"))      # two new, of two services
    assert seen.shown == [("a", ["a:1"]), ("b", ["b:2"])] and catalog.reads == ["a", "b"]
    daemon._show_arrivals(gate_checks("a:1", "b:2"))             # one left: nothing to show
    bulk = [f"c:{n}" for n in range(ARRIVALS_AT_ONCE + 1)]
    daemon._show_arrivals(gate_checks("a:1", "b:2", *bulk))      # a bulk import: the pass takes it
    assert len(seen.shown) == 2 and catalog.reads == ["a", "b"]

    follower = Daemon(catalog, None, [seen], Leader(False))
    follower._show_arrivals(gate_checks("a:0"))
    follower._show_arrivals(gate_checks("a:0", "a:1"))
    assert len(seen.shown) == 2, "a follower shows nothing"


class Broken(Recorder):
    def __init__(self, name, log, fails_on, error):
        super().__init__(name, log)
        self.fails_on, self.error = fails_on, error

    def reconcile(self, service, instances):
        if service == self.fails_on:
            raise self.error
        super().reconcile(service, instances)


def test_a_reconciler_failing_on_one_service_does_not_stop_the_others_but_consul_down_ends_the_pass(caplog):
    import pytest
    import requests
    log = []
    run_pass({"a": [1], "b": [2]}, [Broken("gate", log, "a", KeyError("odd record")), Recorder("promoter", log)])
    assert log == [("promoter", "a", 1), ("gate", "b", 1), ("promoter", "b", 1),
                   ("gate", "end", ["a", "b"]), ("promoter", "end", ["a", "b"])]
    assert "a: Broken failed on this service" in caplog.text and "KeyError: 'odd record'" in caplog.text
    log.clear()
    with pytest.raises(requests.ConnectionError):
        run_pass({"a": [1], "b": [2]}, [Broken("gate", log, "a", requests.ConnectionError()), Recorder("p", log)])
    assert log == []
