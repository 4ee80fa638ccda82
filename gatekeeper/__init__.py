"""gatekeeper: admits an instance only after its integration tests pass, and owns promotion.

`tester` runs a test image against one instance, `gate` decides what to test and keeps each
gate check in step with its stored verdict, `promotion` changes routing policies, `daemon`
watches Consul, `leader` holds the leader lock, `status` reports, `wait` answers CD jobs, and
`__main__` is the command line.
"""

# Label on every container gatekeeper starts, so they can be found and cleaned up.
TEST_LABEL = "proxystack.role"
TEST_LABEL_VALUE = "integration-test"
