"""Stop signals (SIGTERM, SIGINT) turned into a call that cannot deadlock.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is,
including inside `threading.Event.wait()`, `set()` or `clear()` while it holds the Event's lock. A
handler that sets an Event itself then waits for a lock its own thread holds: forever, and every
other thread that touches the Event with it. Here the handler only writes a byte to a pipe (no
Python lock); a thread waiting on the pipe makes the call.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Iterable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(stop: Callable[[], None], signals: Iterable[int] = STOP_SIGNALS) -> None:
    """Call `stop()` from a thread of its own after each of `signals`. Main thread only."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)          # a handler never waits: a full pipe already wakes

    def handler(_signum, _frame):
        try:
            os.write(write_end, b"!")
        except BlockingIOError:
            pass

    def relay():
        while os.read(read_end, 64):
            stop()

    threading.Thread(target=relay, name="stop-signals", daemon=True).start()
    for sig in signals:
        signal.signal(sig, handler)
