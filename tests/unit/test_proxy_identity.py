"""How a proxy is known in Consul: a proxy listening on every address is told apart by its
machine's name (tests/deploy/test_ansible_cluster.py shows three such proxies, one per host, on
real Consul)."""
import socket

from proxy_reloader.__main__ import proxy_identity


def test_a_proxy_on_one_address_is_known_by_it():
    assert proxy_identity("10.210.0.21:8000") == "proxy-reloader:10.210.0.21:8000"


def test_proxies_on_every_address_are_known_by_their_machines_name():
    assert proxy_identity("0.0.0.0:80") == f"proxy-reloader:{socket.gethostname()}:0.0.0.0:80"
    assert proxy_identity("[::]:80") == f"proxy-reloader:{socket.gethostname()}:[::]:80"
