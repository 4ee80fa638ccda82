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
