"""gatekeeper's metrics (served with `run --metrics`, see catalog.metrics)."""
from prometheus_client import Counter, Gauge, Histogram

TEST_RUNS = Counter("gatekeeper_test_runs_total", "Integration-test runs, by service and result",
                    ["service", "result"])
TEST_SECONDS = Histogram("gatekeeper_test_duration_seconds", "Duration of an integration-test run", ["service"],
                         buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
GATE_SECONDS = Histogram("gatekeeper_gate_open_seconds",
                         "From gatekeeper first seeing a new instance to its gate opened", ["service"],
                         buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
PROMOTIONS = Counter("gatekeeper_promotions_total",
                     "Routing changes gatekeeper made: promoted, canary, aborted, rolled back", ["service", "event"])
ANALYSIS_STEPS = Counter("gatekeeper_analysis_steps_total",
                         "Progressive-mode checks, by service and result (pass, fail, hold, inconclusive)",
                         ["service", "result"])
LEADER = Gauge("gatekeeper_leader", "1 while this gatekeeper holds the leader lock")
SCALINGS = Counter("gatekeeper_scalings_total", "Replica-count changes of Swarm services, by direction (out, in)",
                   ["service", "direction"])
HEALINGS = Counter("gatekeeper_healings_total",
                   "Actions on unhealthy admitted instances: replaced (Swarm task), restarted, gave up",
                   ["service", "action"])
