"""A Prometheus behind basic authentication is given as http://user:pass@host:9090: its
password never reaches what others read (the dashboard's page, the history an analysis writes,
the logs). Over real HTTP on loopback: nothing answering, and a server answering an error."""
import pytest

from gatekeeper.prometheus import MetricsUnavailable, Prometheus, shown
from testbed.http_backend import LoopbackHTTP, closed_port, reply_json


def test_the_password_in_the_url_is_in_no_error():
    port = closed_port()
    with pytest.raises(MetricsUnavailable) as down:
        Prometheus(f"http://alice:s3cret@127.0.0.1:{port}", timeout=1).traffic()
    assert "s3cret" not in str(down.value) and "alice" not in str(down.value)
    assert f"Prometheus at http://127.0.0.1:{port}" in str(down.value)
    failing = LoopbackHTTP(lambda h: reply_json(h, {"status": "error", "error": "bad query"}, 500))
    try:
        with pytest.raises(MetricsUnavailable) as refused:
            Prometheus(f"http://alice:s3cret@127.0.0.1:{failing.port}/", timeout=2).traffic()
        assert "s3cret" not in str(refused.value) and "answered 500: bad query" in str(refused.value)
    finally:
        failing.close()


def test_a_url_is_shown_without_its_credentials_and_otherwise_as_given():
    assert shown("https://alice:s3cret@prom.example:9443/base") == "https://prom.example:9443/base"
    assert shown("http://bob@[::1]:9090") == "http://[::1]:9090"
    assert shown("http://127.0.0.1:9090") == "http://127.0.0.1:9090"
