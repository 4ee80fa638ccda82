"""The ACL bootstrap of a cluster that has just elected its leader: Consul answers "currently in
legacy mode" until its servers agree on the ACL system (seen applying ansible/cluster.yml to three
fresh servers, tests/deploy/test_ansible_cluster.py); the bootstrap is asked again, any other
refusal is said at once."""
import pytest

from catalog.acl_setup import AclSetupError, bootstrap


class Api:
    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def call(self, method, path, body=None, ok=(200,)):
        assert (method, path) == ("PUT", "/v1/acl/bootstrap")
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


LEGACY = AclSetupError("PUT /v1/acl/bootstrap: 500 The ACL system is currently in legacy mode.")


def test_legacy_mode_is_waited_out():
    api = Api([LEGACY, LEGACY, {"SecretID": "s3cret"}])
    assert bootstrap(api, wait=10) == "s3cret" and api.calls == 3


def test_another_refusal_or_legacy_mode_past_the_wait_is_said():
    done = Api([AclSetupError("PUT /v1/acl/bootstrap: 403 Permission denied: ACL bootstrap no longer allowed")])
    with pytest.raises(AclSetupError, match="no longer allowed"):
        bootstrap(done, wait=10)
    assert done.calls == 1
    stuck = Api([LEGACY] * 3)
    with pytest.raises(AclSetupError, match="legacy mode"):
        bootstrap(stuck, wait=1.5)
    assert stuck.calls >= 2          # asked again, then given up with Consul's own words
