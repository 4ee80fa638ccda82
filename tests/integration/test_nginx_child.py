"""--exec: proxy-reloader's nginx child, restarted when it dies, on the real nginx. A restart
that cannot be made at once (no memory or process left to fork, the binary away for a moment)
is tried again until it works: the supervision never ends while proxy-reloader runs; and an nginx
that ran healthy for a while is restarted after the first short wait, however often it died before."""
import logging
import os
import re
import shutil
import signal
import time

from catalog.routing import Pool, Route
from proxy_reloader.nginx import Nginx, find_nginx
from proxy_reloader.render import render
from proxy_reloader import supervisor
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


def test_an_nginx_that_ran_healthy_is_restarted_after_the_first_short_wait_again(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(supervisor, "STEADY", 2.0)
    n = Nginx(str(tmp_path / "prefix"), listen=f"127.0.0.1:{PORT}")
    n.swap(n.validate(render([Route("a", "/a/", "", Pool("v1", (("127.0.0.1", 1),)))], str(n.prefix),
                             f"127.0.0.1:{PORT}")))
    child = NginxChild(n)
    caplog.set_level(logging.INFO, logger="proxy_reloader.supervisor")
    child.start()

    def kill_and_wait_for_the_restart():
        pid = child.proc.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: child.proc.pid != pid and n.served_version(), 30, "nginx restarted")

    def waits():
        return [float(m) for m in re.findall(r"restarting in ([\d.]+) s", caplog.text)]

    try:
        wait_until(lambda: n.served_version(), 20, "nginx up as a child")
        kill_and_wait_for_the_restart()
        kill_and_wait_for_the_restart()                  # died again at once: waited on longer
        assert waits() == [0.5, 1.0]
        time.sleep(2.5)                                  # then it ran healthy for STEADY
        kill_and_wait_for_the_restart()
        assert waits() == [0.5, 1.0, 0.5]
    finally:
        child.stop()
