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


class JobCancelled(Exception):
    """Raised inside a running job at a step boundary once a cancel was asked for."""
