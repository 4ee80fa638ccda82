"""Which failures are worth trying again (catalog.retry.is_transient): Consul or the network
away for a moment, yes; a request Consul will refuse the same way every time, no."""
import consul.base
import pytest
import requests

from catalog.retry import is_transient


@pytest.mark.parametrize("exc, again", [
    (requests.ConnectionError("refused"), True),
    (requests.Timeout("slow"), True),
    (consul.base.ConsulException("500 No cluster leader"), True),
    (consul.base.ClientError("429 Too Many Requests"), True),           # the agent's per-client limit
    (consul.base.ACLPermissionDenied("ACL not found"), True),          # a restarted server loading its ACLs
    (consul.base.NotFound("404 no such key"), False),
    (consul.base.ClientError("400 Bad request: bad check ID"), False),
    (ValueError("not JSON"), False),
])
def test_what_is_tried_again(exc, again):
    assert is_transient(exc) is again
