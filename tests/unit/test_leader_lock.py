"""The leader lock's standby side on a fake lock store (the handover itself runs against real
Consul in tests/e2e/test_cluster.py and test_promotion.py): a daemon waiting its turn keeps its
session renewed and, if Consul dropped it meanwhile, makes a new one instead of failing."""
from catalog.leader import LeaderLock


class Locks:
    """Sessions by id; `expire` drops one as Consul does after twice its TTL without a renewal."""

    def __init__(self, holder="other"):
        self.sessions, self.holder, self.made, self.renewals = set(), holder, 0, 0

    def create_session(self, identity, ttl, lock_delay):
        self.made += 1
        sid = f"s{self.made}"
        self.sessions.add(sid)
        return sid

    def renew(self, session):
        self.renewals += 1
        return session in self.sessions

    def acquire(self, key, session, value):
        if session not in self.sessions:
            raise AssertionError("acquired with an invalid session")
        if self.holder is None:
            self.holder = session
        return self.holder == session

    def expire(self, session):
        self.sessions.discard(session)


def test_a_standby_renews_its_session_and_makes_a_new_one_when_it_expired():
    locks = Locks()
    lock = LeaderLock(locks, "gatekeeper@h2")
    assert lock.try_acquire() is False and lock.session == "s1"
    assert lock.try_acquire() is False and locks.renewals == 1 and lock.session == "s1", "renewed, kept"
    locks.expire("s1")
    assert lock.try_acquire() is False and lock.session == "s2", "a new session, no error"
    locks.holder = None                                   # the leader went
    assert lock.try_acquire() is True and lock.is_leader.is_set() and locks.holder == "s2"
