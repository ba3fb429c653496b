"""Serving the dashboard: the bind rules (loopback, or a token), the socket, uvicorn.

Imported only by ``cganctl ui``; importing it needs the ``ui`` extra (Starlette, Jinja2, uvicorn).
"""
from __future__ import annotations

import errno
import ipaddress
import socket

import uvicorn

from ..errors import InvalidInput, ServiceUnavailable
from .app import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a taken port is ServiceUnavailable (exit 3)."""
    if not 1 <= port <= 65535:
        raise InvalidInput(f"--port must be from 1 to 65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot bind to host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServiceUnavailable(f"port {port} on {host} is already in use; pick another with --port") from None
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


MIN_TOKEN_CHARS = 16  # a token that guards a dashboard on the network: `openssl rand -hex 16` gives 32


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, echo=print) -> None:
    from ..settings import get_settings

    settings = get_settings()
    token = settings.ui_token.get_secret_value() if settings.ui_token else None
    if not is_loopback(host) and not token:
        raise InvalidInput(
            f"binding to {host} (not loopback) needs a token: set CGAN_UI_TOKEN, then open the dashboard once with the token in its URL (its token parameter)"
        )
    if not is_loopback(host) and token and (len(token) < MIN_TOKEN_CHARS or token != token.strip() or token == "CHANGE-ME"):
        raise InvalidInput(
            f"binding to {host} (not loopback) needs a token that is hard to guess: CGAN_UI_TOKEN has {len(token)} characters"
            f"{' with spaces at an end' if token != token.strip() else ''}{' (the placeholder of deploy/k8s/secret.yaml)' if token == 'CHANGE-ME' else ''}; "
            f"use at least {MIN_TOKEN_CHARS}, e.g. $(openssl rand -hex 16)"
        )
    from ..db import prefer_fresh_connections

    prefer_fresh_connections()  # a database that stops answering fails a page within connect_timeout, never hangs it
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    echo(f"cganctl dashboard (read-only) on http://{shown}:{sock.getsockname()[1]}/")
    if token:
        echo("every request needs the CGAN_UI_TOKEN token: open a page once with ?token=..., or send 'Authorization: Bearer ...'")
    else:
        echo("bound to loopback only; to serve other hosts set CGAN_UI_TOKEN and pass --host")
    app = create_app(settings=settings, token=token)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, proxy_headers=False)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
