"""The one retry policy: exponential back-off with jitter, through tenacity."""
from __future__ import annotations

import logging

import requests
import tenacity

log = logging.getLogger(__name__)

# Errors worth retrying: the far side was unreachable, slow, or answered 5xx.
TRANSIENT = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)


def backoff(max_wait: float = 10.0, attempts: int | None = None, on=TRANSIENT, what: str = "call"):
    """A tenacity decorator: retry `on` errors with jittered exponential waits up to `max_wait`."""
    def _log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s failed (%s: %s); retry %d in %.1fs", what, type(exc).__name__, exc,
                    state.attempt_number, state.next_action.sleep if state.next_action else 0)

    return tenacity.retry(
        retry=tenacity.retry_if_exception_type(on),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=max_wait),
        stop=tenacity.stop_after_attempt(attempts) if attempts else tenacity.stop_never,
        before_sleep=_log,
        reraise=True,
    )
