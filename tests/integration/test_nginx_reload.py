"""A reload that nginx -t passes but nginx cannot carry out is detected and reverted."""
import socket
import subprocess

import pytest

from catalog.routing import Pool, Route
from proxy_reloader.nginx import Nginx, ReloadError
from proxy_reloader.render import config_version, render
from testbed.processes import wait_until

PORT = 18779


@pytest.fixture
def nginx(tmp_path):
    n = Nginx(str(tmp_path), listen=f"127.0.0.1:{PORT}", reload_timeout=2)
    n.apply(render([Route("a", "/a/", "", Pool("v1", (("127.0.0.1", 1),)))], str(tmp_path), f"127.0.0.1:{PORT}"))
    subprocess.run([n.binary, "-p", str(n.prefix), "-c", str(n.conf)], check=True, timeout=20)
    wait_until(lambda: n.served_version(), 10, "nginx up")
    yield n
    import os, signal
    os.kill(n.master_pid(), signal.SIGQUIT)


def test_a_reload_that_fails_after_nginx_t_is_reverted(nginx, tmp_path):
    good = nginx.current()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", PORT + 1))
    blocker.listen()
    try:
        bad = render([Route("b", "/b/", "", Pool("v1", (("127.0.0.1", 2),)))], str(tmp_path), f"127.0.0.1:{PORT}")
        bad = bad.replace(f"listen 127.0.0.1:{PORT} default_server;",
                          f"listen 127.0.0.1:{PORT} default_server;\n        listen 127.0.0.1:{PORT + 1};")
        with pytest.raises(ReloadError) as err:
            nginx.apply(bad)
        assert "Address already in use" in str(err.value)
        assert nginx.current() == good
        assert nginx.served_version() == config_version(good)
    finally:
        blocker.close()


def test_a_good_reload_is_confirmed_by_the_served_version(nginx, tmp_path):
    new = render([Route("c", "/c/", "", Pool("v2", (("127.0.0.1", 3),)))], str(tmp_path), f"127.0.0.1:{PORT}")
    assert nginx.apply(new)
    assert nginx.served_version() == config_version(new)
