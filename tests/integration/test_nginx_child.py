"""--exec: proxy-reloader's nginx child, restarted when it dies, on the real nginx. A restart
that cannot be made at once (no memory or process left to fork, the binary away for a moment)
is tried again until it works: the supervision never ends while proxy-reloader runs."""
import logging
import os
import shutil
import signal

from catalog.routing import Pool, Route
from proxy_reloader.nginx import Nginx, find_nginx
from proxy_reloader.render import render
from proxy_reloader.supervisor import NginxChild
from testbed.processes import wait_until

PORT = 18783


def test_a_restart_that_fails_is_tried_again_until_nginx_runs(tmp_path, caplog):
    binary = tmp_path / "bin" / "nginx"
    binary.parent.mkdir()
    binary.symlink_to(shutil.which("nginx") or find_nginx())
    n = Nginx(str(tmp_path / "prefix"), binary=str(binary), listen=f"127.0.0.1:{PORT}")
    n.swap(n.validate(render([Route("a", "/a/", "", Pool("v1", (("127.0.0.1", 1),)))], str(n.prefix),
                             f"127.0.0.1:{PORT}")))
    child = NginxChild(n)
    caplog.set_level(logging.INFO, logger="proxy_reloader.supervisor")
    child.start()
    try:
        wait_until(lambda: n.served_version(), 20, "nginx up as a child")
        first = child.proc.pid
        binary.unlink()                                  # the next start cannot exec it
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: "could not start nginx" in caplog.text, 20, "a restart that fails, said")
        assert not n.served_version()
        binary.symlink_to(shutil.which("nginx") or find_nginx())
        wait_until(lambda: child.proc.pid != first and n.served_version(), 30, "nginx restarted once it can be")
        assert child.restarts == 1
    finally:
        child.stop()
