"""The one retry policy: exponential back-off with jitter, through tenacity.

Worth retrying: the far side unreachable or slow, a 5xx answer (Consul says "No cluster
leader" while it elects one, "invalid session" after a restart), or a permission refusal
("ACL not found" while a restarted server loads its ACLs; a token or policy being fixed).
Not worth it: other 4xx answers (a malformed request, a missing key), which no amount of
waiting fixes; they surface at once.
"""
from __future__ import annotations

import logging
import re

import requests
import tenacity

from .consul_client import ACLPermissionDenied, BadRequest, ConsulException, NotFound

log = logging.getLogger(__name__)

NETWORK = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)
# For `except` clauses: everything is_transient may accept.
TRANSIENT = NETWORK + (ConsulException,)
_STATUS = re.compile(r"(?:^|: )(\d{3}) ")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, NETWORK):
        return True
    if isinstance(exc, ConsulException):
        if isinstance(exc, ACLPermissionDenied):
            return True
        if isinstance(exc, (NotFound, BadRequest)):
            return False
        m = _STATUS.search(str(exc))
        # 5xx, and 429: the agent's per-client connection limit, free again in a moment
        return m is None or m.group(1).startswith("5") or m.group(1) == "429"
    return False


def backoff(max_wait: float = 10.0, attempts: int | None = None, on=None, what: str = "call"):
    """A tenacity decorator: retry transient errors (or `on` types as well) with jittered
    exponential waits up to `max_wait`."""
    def retryable(exc: BaseException) -> bool:
        return is_transient(exc) or (on is not None and isinstance(exc, on))

    def _log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s failed (%s: %s); retry %d in %.1fs", what, type(exc).__name__, exc,
                    state.attempt_number, state.next_action.sleep if state.next_action else 0)

    return tenacity.retry(
        retry=tenacity.retry_if_exception(retryable),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=max_wait),
        stop=tenacity.stop_after_attempt(attempts) if attempts else tenacity.stop_never,
        before_sleep=_log,
        reraise=True,
    )
