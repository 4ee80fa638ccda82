"""proxy-reloader --exec on a full disk, with real Consul and nginx: started when it cannot write
nginx's table file, it still starts nginx with the config and table on disk (written by an
earlier run), keeps running, and says why in /status. (The unit twin, with the runner's retries:
tests/unit/test_full_disk.py.)

The full disk is simulated: in the proxy-reloader process every write of the table file raises
OSError(ENOSPC), what a write to a full filesystem raises."""
from __future__ import annotations

import json
import sys
import urllib.request

from proxy_reloader.nginx import Nginx
from testbed.processes import Proc, python_module, wait_until

LISTEN, ADMIN = 18792, 18793

NO_ROOM = """
import errno, os, sys
from proxy_reloader import backends, __main__ as reloader
def no_room(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
backends.write_table = no_room
sys.exit(reloader.main(sys.argv[1:]))
"""


def status():
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/status", timeout=5) as r:
        return json.loads(r.read())


def test_exec_on_a_full_disk_starts_nginx_with_what_is_on_disk_and_says_why(consul_server, tmp_path):
    prefix = tmp_path / "nginx"
    options = ["--consul", consul_server.address, "--consul-token-file", consul_server.token_file("proxy-reloader"),
               "--nginx-prefix", str(prefix), "--listen", f"127.0.0.1:{LISTEN}"]
    once = Proc("render-once", python_module("proxy_reloader", *options, "--once"), tmp_path).start()
    assert once.popen.wait(60) == 0, once.log()
    table = (prefix / "backends.json").read_bytes()

    proc = Proc("proxy-reloader-full-disk", [sys.executable, "-c", NO_ROOM, *options, "--admin",
                                             f"127.0.0.1:{ADMIN}", "--exec"], tmp_path).start()
    nginx = Nginx(str(prefix), listen=f"127.0.0.1:{LISTEN}")
    try:
        wait_until(lambda: nginx.served_version() or not proc.alive(), 30, "nginx serving, or proxy-reloader gone")
        assert proc.alive(), proc.log()
        assert nginx.served_version() == status()["config_version"], "the config on disk"
        error = f"could not write {prefix / 'backends.json'}: No space left on device"
        # file_errors is written as the write fails, last_error once the change it was part of is done
        wait_until(lambda: (lambda s: s["file_errors"] == {str(prefix / "backends.json"): error}
                            and error in (s["last_error"] or ""))(status()), 20,
                   "the unwritable table file in /status, and in its last error")
        assert (prefix / "backends.json").read_bytes() == table, "the last table written stays"
        assert "first render: could not write nginx's files" in proc.log()
    finally:
        proc.stop()
    assert not proc.alive()
