"""Errors the CLI turns into one clear line on stderr and a non-zero exit."""
from __future__ import annotations


class CganError(Exception):
    """Base of every error meant for the user; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InvalidInput(CganError, ValueError):
    """The request is wrong: nothing was written or enqueued."""

    exit_code = 2


class NotFound(CganError, LookupError):
    exit_code = 2


class ServiceUnavailable(CganError):
    """The broker, the database or the object store did not answer."""

    exit_code = 3


class ServiceRefused(CganError):
    """A service answered and refused: credentials not accepted, no access, a bucket that does not exist.

    Not transient: a retry meets the same refusal, so a task fails its job at once with this message."""

    exit_code = 3


class RetryBudgetSpent(CganError):
    """A service stayed unavailable for the whole ``CGAN_TRANSIENT_RETRY_BUDGET``: the job fails with why."""

    exit_code = 3


class JobCancelled(Exception):
    """Raised inside a running job at a step boundary once a cancel was asked for."""
