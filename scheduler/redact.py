"""One redaction for every URL setting and every message that may echo one (torch-free, import-light).

:func:`redact_url` hides the user info of ``scheme://user:password@host`` whatever characters the
password holds (``/``, ``#``, ``?``, ``@``: the user info runs to the *last* ``@`` of the authority-ish
part) and the values of query parameters that look like credentials (``password=``, ``secret``, ``token``,
``key``, ...). :func:`scrub` removes every secret of the configured settings from an arbitrary text
(driver and broker errors can echo the URL or parts of it); :class:`ScrubFilter` does the same for log
records. Status, errors, job errors, logs and reprs go through these.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature|sig$", re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.DOTALL)
# a URL with user info inside a longer text: scheme://<anything without spaces or quotes>@
# Each starts only where its first character cannot extend a longer run to the left (the lookbehinds):
# without that, a long unbroken token (a 100 kB --label) costs quadratic time to scan.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*://)([^\s'\"<>]*)@", re.DOTALL)
# ``password=x``, ``token = x``, ``secret:x``; not prose such as "needs a token: set ..." (a colon then a space)
_SECRET_PAIR_IN_TEXT = re.compile(r"((?:(?<![A-Za-z_])[A-Za-z_]*(?:password|passwd|pwd|secret|token|api_?key|access_?key))(?:\s*=\s*|:(?=\S)))([^\s&'\",;)]+)", re.IGNORECASE)


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        parts.append(f"{name}={MASK}" if sep and value and SECRET_PARAM.search(unquote(name)) else item)
    return "&".join(parts)


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, rest)``; the user info ends at the last ``@`` of the URL."""
    match = _SCHEME.match(url)
    if not match:
        return "", None, url
    scheme, tail = match.groups()
    at = tail.rfind("@")
    if at < 0:
        return scheme, None, tail
    return scheme, tail[:at], tail[at + 1 :]


def redact_url(url: str | None) -> str:
    """``url`` with its password (or a user-only credential) shown as ``***`` and secret query values hidden."""
    if not url:
        return url or ""
    scheme, userinfo, rest = split_userinfo(url)
    if userinfo is not None:
        user, sep, _password = userinfo.partition(":")
        plain_user = sep and not any(c in user for c in "/?#") and not scheme.lower().startswith("http")
        shown_user = user if plain_user else ""  # an S3 endpoint's user is its access key: hidden too
        is_http = scheme.lower().startswith("http")
        userinfo_shown = f"{shown_user}:{MASK}" if sep else (MASK if is_http or any(c in user for c in "/?#") else user)
        rest = f"{userinfo_shown}@{rest}"
    path, qsep, query = rest.partition("?")
    if qsep:
        query, fsep, fragment = query.partition("#")
        rest = f"{path}?{_redact_query(query)}{fsep}{fragment}"
    return f"{scheme}{rest}"


def secrets_of(url: str | None) -> list[str]:
    """The secret pieces of one URL (password, user-only credential, secret query values), raw and decoded."""
    if not url:
        return []
    found: list[str] = []
    scheme, userinfo, rest = split_userinfo(url)
    if userinfo is not None:
        user, sep, password = userinfo.partition(":")
        if sep:
            found.append(password)
        if scheme.lower().startswith("http") or any(c in user for c in "/?#"):
            found.append(user)  # an S3 endpoint's user is its access key
    _path, qsep, query = rest.partition("?")
    if qsep:
        for item in query.partition("#")[0].split("&"):
            name, sep, value = item.partition("=")
            if sep and value and SECRET_PARAM.search(unquote(name)):
                found.append(value)
    return [s for piece in found for s in {piece, unquote(piece)} if len(s) >= 3]


class Scrubber:
    """Replaces the given URLs by their redacted form and every secret piece by ``***`` in a text."""

    def __init__(self, urls: Iterable[str | None] = (), secrets: Iterable[str | None] = ()) -> None:
        self.urls = sorted({u for u in urls if u}, key=len, reverse=True)
        pieces = {s for u in self.urls for s in secrets_of(u)} | {s for s in secrets if s and len(s) >= 3}
        self.secrets = sorted(pieces, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for url in self.urls:
            if url in text:
                text = text.replace(url, redact_url(url))
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0) + "x")[:-1], text)
        return _SECRET_PAIR_IN_TEXT.sub(lambda m: m.group(1) + MASK, text)


def settings_scrubber(settings=None) -> Scrubber:
    """The scrubber for the configured settings (read from the environment when not given)."""
    if settings is None:
        try:
            from .settings import get_settings

            settings = get_settings()
        except Exception:  # invalid settings: scrub with what the environment holds
            import os

            values = [v for k, v in os.environ.items() if k.startswith("CGAN_") and k.endswith(("_URL", "_KEY", "_KEY_ID"))]
            return Scrubber(urls=[v for v in values if "://" in v], secrets=[v for v in values if "://" not in v])
    keys = [getattr(settings, name, None) for name in ("s3_access_key_id", "s3_secret_access_key")]
    return Scrubber(
        urls=[settings.database_url, settings.broker_url, settings.s3_endpoint_url],
        secrets=[k.get_secret_value() if k is not None else None for k in keys],
    )


def scrub(text: str, settings=None) -> str:
    """``text`` without any secret of the settings (and without any ``user:password@`` of any URL)."""
    return settings_scrubber(settings)(str(text))


def reason(exc: BaseException) -> str:
    """The first line of what a driver, the broker or S3 said (a wrapped driver error's own), scrubbed:
    such a message can echo a URL or its password."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return scrub(lines[0] if lines else type(exc).__name__)


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs the message and the traceback text of every record it sees."""

    def __init__(self, settings=None, *, tracebacks: bool = True) -> None:
        super().__init__()
        self.settings = settings
        self.tracebacks = tracebacks
        self._scrubber: Scrubber | None = None

    @property
    def scrubber(self) -> Scrubber:
        if self._scrubber is None:  # built on the first record: the settings are read lazily
            self._scrubber = settings_scrubber(self.settings)
        return self._scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        if not self.tracebacks:
            if record.exc_info and record.exc_info[1] is not None:
                message = f"{message}: {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        elif record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.scrubber(message), None
        if record.exc_text:
            record.exc_text = self.scrubber(record.exc_text)
        return True


def install_log_scrubbing(logger: logging.Logger | None = None, settings=None) -> None:
    """Scrub every record of every handler of ``logger`` (default: the root logger): worker logs."""
    flt = ScrubFilter(settings)
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(flt)


def cli_log_handler() -> logging.Handler:
    """The CLI's stderr handler: warnings and errors as one scrubbed line each, never a traceback."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubFilter(tracebacks=False))
    # An in-process job's failure is the job's error, which the CLI prints as its own `error:` line; the
    # executor's log line of it (for a worker's log) would say it twice.
    handler.addFilter(lambda record: record.name != "worker.execute")
    return handler
