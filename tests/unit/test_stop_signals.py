"""A stop signal that lands while the main thread holds an Event's lock (inside its wait(),
set() or clear()) still stops the daemon. Each daemon's SIGTERM handler once set an Event itself:
in that window it waited for a lock its own thread held, the daemon never stopped, and its nginx
child was never told to finish."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
import os, signal, threading
from catalog.signals import stop_on_signals
stopping = threading.Event()
{install}
with stopping._cond:                        # where Event.wait/set/clear hold the lock
    os.kill(os.getpid(), signal.{signal})
    for _ in range(200000):                 # the handler runs here, between two bytecodes
        pass
print("stopped" if stopping.wait(5) else "not stopped", flush=True)
"""


def run(install: str, sig: str = "SIGTERM", timeout: float = 20.0) -> str:
    code = SCENARIO.format(install=install, signal=sig)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout).stdout.strip()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_in_the_lock_window_stops_the_daemon(sig):
    assert run("stop_on_signals(stopping.set)", sig) == "stopped"


def test_the_window_is_real_a_handler_that_sets_the_event_itself_hangs_there():
    """The scenario above does reach the hazard: the old handler never returns from it."""
    with pytest.raises(subprocess.TimeoutExpired):
        run("signal.signal(signal.SIGTERM, lambda *_: stopping.set())", timeout=4.0)


def test_every_daemon_hands_its_stop_signals_to_the_relay():
    """The daemons that stop by setting an Event go through catalog.signals; gatekeeper's own
    handler only raises SystemExit (it must leave a Consul call) and cleans up afterwards."""
    for module in ("registrator/__main__.py", "proxy_reloader/__main__.py", "monitoring/targets.py"):
        text = (ROOT / module).read_text()
        assert "stop_on_signals(" in text and "signal.signal(" not in text, module
    handler = (ROOT / "gatekeeper/app.py").read_text().split("def on_signal", 1)[1].split("\n\n", 1)[0]
    assert "raise SystemExit" in handler and ".stop()" not in handler and ".set()" not in handler
