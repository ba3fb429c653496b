"""The object store behind one small interface: S3 through boto3, or a local folder (embedded default).

Keys are ``/``-separated strings. Every write replaces the whole object, so a retried task that rewrites
its keys leaves exactly what one successful run would.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

from .errors import NotFound, ServiceRefused, ServiceUnavailable
from .redact import redact_url, scrub
from .settings import Settings

# S3 error codes that say "this request will never be allowed as configured": a retry cannot help.
# ("403" is what a HEAD request reports: it has no body to carry a code.)
_REFUSED_CODES = frozenset({
    "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem",
    "InvalidBucketName", "NoSuchBucket",
})

# How long one S3 call may wait for an answer: (socket read timeout in s, attempts in all, with botocore's backoff).
# A worker is patient: its task waits out an S3 outage of minutes and the job goes on. A command or a
# dashboard page is not: someone is waiting, so a frozen endpoint is an `error:` (exit 3) or a 503 in ~20 s.
S3_PATIENCE = {"worker": (60, 6), "interactive": (10, 2)}


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def location(self, key: str) -> str: ...
    def check(self) -> str: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalStore:
    """Objects as files under one folder; writes go through a temporary file and an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write(self, key: str, write) -> None:
        path = self._path(key)
        for attempt in range(3):  # a delete_prefix in another process may remove the folder, emptied, in between
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._write(key, lambda handle: handle.write(data))

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        with open(path, "rb") as source:
            self._write(key, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.root}") from None

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"object {key!r} not found in {self.root}")
        return path.stat().st_size

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix.rpartition("/")[0]  # only walk the folder the prefix lies in
        if not base.is_dir():
            return iter(())
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return iter(sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith(".tmp-")))

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        # folders left empty go too, up to the store's root, as on S3, which has no folders (a pruned checkpoint
        # leaves no empty step-N/, a cancelled job no empty jobs/<id>/)
        stop = self.root
        for folder in sorted({self._path(key).parent for key in keys}, key=lambda p: len(p.parts), reverse=True):
            while folder != stop and stop in folder.parents:
                try:
                    folder.rmdir()
                except OSError:  # not empty (or gone): its parents are not empty either
                    break
                folder = folder.parent
        return len(keys)

    def location(self, key: str) -> str:
        return str(self.root / key)

    def check(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise ServiceUnavailable(f"object store folder {self.root} is not writable")
        return f"local folder {self.root}"


class S3Store:
    """Any S3-compatible endpoint: path-style addressing, checksums only where the API requires them."""

    def __init__(self, settings: Settings, patient: bool = False) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.endpoint = settings.s3_endpoint_url
        self.shown_endpoint = redact_url(self.endpoint) or 'AWS'  # never the credentials in it
        read_timeout, attempts = S3_PATIENCE["worker" if patient else "interactive"]
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=read_timeout,
        )
        secret = settings.s3_secret_access_key
        key_id = settings.s3_access_key_id
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=config,
        )

    def _call(self, what: str, func, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return func(*args, **kwargs)
        except NoCredentialsError:  # nothing was sent: a setting is missing, not a service down
            raise ServiceRefused(
                f"no S3 credentials for {self.shown_endpoint}: set CGAN_S3_ACCESS_KEY_ID and CGAN_S3_SECRET_ACCESS_KEY "
                "(or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role)"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"{what}: not found in s3://{self.bucket}") from None
            if code in ("NoSuchBucket", "InvalidBucketName"):
                raise ServiceRefused(f"bucket s3://{self.bucket} does not exist at {self.shown_endpoint} ({code}): create it or fix CGAN_S3_BUCKET") from None
            if code in _REFUSED_CODES:
                raise ServiceRefused(
                    f"S3 {what} refused by {self.shown_endpoint} ({code}): the credentials (CGAN_S3_ACCESS_KEY_ID / "
                    f"CGAN_S3_SECRET_ACCESS_KEY) are not accepted or have no access to s3://{self.bucket}"
                ) from None
            raise ServiceUnavailable(f"S3 {what} failed: {code or scrub(str(exc))}") from exc
        except BotoCoreError as exc:
            raise ServiceUnavailable(f"S3 at {self.shown_endpoint} is unreachable: {scrub(str(exc))}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._call(f"put {key}", self.client.put_object, Bucket=self.bucket, Key=_check_key(key), Body=data, ContentType=content_type)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        self._call(
            f"upload {key}",
            self.client.upload_file,
            str(path),
            self.bucket,
            _check_key(key),
            ExtraArgs={"ContentType": content_type},
        )

    def get_bytes(self, key: str) -> bytes:
        response = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=key)
        return response["Body"].read()

    def download(self, key: str, path: Path) -> None:
        self._call(f"download {key}", self.client.download_file, self.bucket, key, str(path))

    def exists(self, key: str) -> bool:
        try:
            self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=_check_key(key))["ContentLength"])

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(f"list {prefix}", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        return iter(sorted(obj["Key"] for page in pages for obj in page.get("Contents", [])))

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call(f"delete {prefix}", self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def check(self) -> str:
        try:
            self._call("head bucket", self.client.head_bucket, Bucket=self.bucket)
        except NotFound:
            raise ServiceRefused(f"bucket s3://{self.bucket} does not exist at {self.shown_endpoint}: create it or fix CGAN_S3_BUCKET") from None
        return f"s3://{self.bucket} at {self.shown_endpoint}"


def open_store(settings: Settings, patient: bool = False) -> ObjectStore:
    """The configured store; ``patient``: a worker's S3 client (see S3_PATIENCE)."""
    return S3Store(settings, patient) if settings.s3_bucket else LocalStore(settings.make_folder(settings.local_store_dir))
