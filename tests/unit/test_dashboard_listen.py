"""The dashboard warns when it listens off this machine over plain HTTP (the tokens pasted at its
login would cross the network readable): which listen addresses are this machine's own."""
from dashboard.__main__ import loopback


def test_loopback_addresses_and_names_are_this_machines_own_and_others_not():
    assert all(loopback(h) for h in ("127.0.0.1", "127.0.0.2", "[::1]", "::1", "localhost"))
    assert not any(loopback(h) for h in ("0.0.0.0", "10.0.0.5", "[::]", "dash.example.com"))
