"""gatekeeper: admits an instance only after its integration tests pass, and owns promotion.

Four parts, each a package: `admission` (run the tests, keep gates equal to verdicts),
`promotion` (routing policies: auto, manual, progressive), `fleet` (Swarm, rolling updates,
scaling, healing) and `report` (status, why, wait). Beside them: `daemon` watches Consul while
`leader` holds the leader lock, `prometheus` is the one Prometheus adapter, `metrics` holds
gatekeeper's own metrics, and `__main__` is the command line.

The public API for other programs (delivery, CD jobs in Python): `wait_for_version` and its
outcomes, the same as `gatekeeper wait`.
"""
from .report.wait import WAIT_FAILED, WAIT_OK, WAIT_TIMEOUT, wait_for_version

__all__ = ["wait_for_version", "WAIT_OK", "WAIT_FAILED", "WAIT_TIMEOUT", "TEST_LABEL", "TEST_LABEL_VALUE"]

# Label on every container gatekeeper starts, so they can be found and cleaned up.
TEST_LABEL = "proxystack.role"
TEST_LABEL_VALUE = "integration-test"
