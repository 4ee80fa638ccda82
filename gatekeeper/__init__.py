"""gatekeeper: admits an instance only after its integration tests pass, and owns promotion.

`tester` runs a test image against one instance, `gate` decides what to test and keeps each
gate check in step with its stored verdict, `promotion` changes routing policies, `daemon`
watches Consul, `leader` holds the leader lock, `status` and `explain` report, `wait` answers
CD jobs, and `__main__` is the command line.

The public API for other programs (delivery, CD jobs in Python): `wait_for_version` and its
outcomes, the same as `gatekeeper wait`.
"""
from .wait import WAIT_FAILED, WAIT_OK, WAIT_TIMEOUT, wait_for_version

__all__ = ["wait_for_version", "WAIT_OK", "WAIT_FAILED", "WAIT_TIMEOUT", "TEST_LABEL", "TEST_LABEL_VALUE"]

# Label on every container gatekeeper starts, so they can be found and cleaned up.
TEST_LABEL = "proxystack.role"
TEST_LABEL_VALUE = "integration-test"
