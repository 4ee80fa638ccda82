"""The errors the stack reports to people and programs, one hierarchy for every part.

Each carries the exit code a command-line tool ends with (catalog.cli's table), so a CLI maps
any of them with `exc.exit_code` instead of listing classes; str() says what was wrong and what
to do. Errors of the libraries underneath (requests, python-consul2, the Docker SDK) are
translated at the CLI's edge.
"""
from __future__ import annotations

from .cli import EXIT_FAILED, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE


class StackError(Exception):
    exit_code = EXIT_FAILED


class Refused(StackError):
    """The request is understood but cannot be carried out (unknown service, no canary to
    promote, a build or its tests failed)."""
    exit_code = EXIT_FAILED


class BadInput(StackError, ValueError):
    """A value or option is invalid; nothing was changed."""
    exit_code = EXIT_USAGE


class Unreachable(StackError):
    """Consul, a Docker Engine or a registry cannot be reached or refuses the request."""
    exit_code = EXIT_UNREACHABLE


class TimedOut(StackError):
    exit_code = EXIT_TIMEOUT
