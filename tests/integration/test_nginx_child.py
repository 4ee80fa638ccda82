"""--exec: proxy-reloader's nginx child, restarted when it dies, on the real nginx. A restart
that cannot be made at once (no memory or process left to fork, the binary away for a moment)
is tried again until it works: the supervision never ends while proxy-reloader runs; and an nginx
that ran healthy for a while is restarted after the first short wait, however often it died before."""
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from catalog.routing import Pool, Route
from proxy_reloader.nginx import Nginx, find_nginx
from proxy_reloader.render import config_version, render
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


def gone(left):
    """The nginx a test started itself, workers and all (its own process group), whatever the test did."""
    try:
        os.killpg(left.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _config(n, path):
    text = render([Route("a", path, "", Pool("v1", (("127.0.0.1", 1),)))], str(n.prefix), f"127.0.0.1:{PORT}")
    n.swap(n.validate(text))
    return config_version(text)


def test_the_nginx_a_killed_proxy_reloader_left_is_taken_over_not_started_twice(tmp_path, caplog):
    n = Nginx(str(tmp_path / "prefix"), listen=f"127.0.0.1:{PORT}")
    _config(n, "/a/")
    # What a proxy-reloader killed with SIGKILL leaves: its nginx, in its own session, serving on.
    left = subprocess.Popen([n.binary, "-p", str(n.prefix), "-c", str(n.conf), "-g", "daemon off;"],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=left.wait, daemon=True).start()    # collected when it exits, as init would
    child = NginxChild(n)
    caplog.set_level(logging.INFO, logger="proxy_reloader.supervisor")
    try:
        wait_until(lambda: n.served_version(), 20, "the left nginx up")
        wanted = _config(n, "/b/")                   # the next proxy-reloader writes its config first
        child.start()
        assert child.proc.pid == left.pid, "a second nginx was started beside the first"
        assert "taking it over" in caplog.text
        assert n.served_version() == wanted          # and the nginx taken over serves it
        os.kill(left.pid, signal.SIGKILL)            # it dies: restarted like a child
        wait_until(lambda: child.proc.pid != left.pid and n.served_version() == wanted, 30,
                   "nginx restarted after the one taken over died")
        assert "code unknown: taken over" in caplog.text
    finally:
        child.stop()
        gone(left)
    assert n.master_pid() is None


def test_stopping_proxy_reloader_stops_the_nginx_it_took_over(tmp_path):
    n = Nginx(str(tmp_path / "prefix"), listen=f"127.0.0.1:{PORT}")
    _config(n, "/a/")
    left = subprocess.Popen([n.binary, "-p", str(n.prefix), "-c", str(n.conf), "-g", "daemon off;"],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=left.wait, daemon=True).start()
    child = NginxChild(n)
    try:
        wait_until(lambda: n.served_version(), 20, "the left nginx up")
        child.start()
        assert child.proc.pid == left.pid
    finally:
        child.stop()
        stopped = left.poll() is not None
        gone(left)
    assert stopped, "the nginx taken over still runs after proxy-reloader stopped"
    assert not n.served_version()


def test_a_pid_file_naming_another_process_is_not_taken_for_nginx(tmp_path):
    n = Nginx(str(tmp_path / "prefix"), listen=f"127.0.0.1:{PORT}")
    _config(n, "/a/")
    n.pid_file.write_text(f"{os.getpid()}\n")        # a stale file whose number is in use by now
    child = NginxChild(n)
    try:
        child.start()
        assert child.proc.pid != os.getpid()
        wait_until(lambda: n.served_version(), 20, "nginx started as a child")
    finally:
        child.stop()
