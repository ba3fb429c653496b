"""One settings object, read from ``CGAN_*`` environment variables.

With nothing set, cganctl runs on the embedded default: a SQLite job table and a local folder as the
object store under ``CGAN_DATA_DIR``, jobs executed in-process. ``CGAN_BROKER_URL`` switches queueing
to Celery, ``CGAN_DATABASE_URL`` the job table (e.g. PostgreSQL), ``CGAN_S3_BUCKET`` the object store.
Secrets are ``SecretStr`` and every URL is shown through :func:`scheduler.redact.redact_url`
(re-exported here).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .redact import redact_url

__all__ = ["Settings", "get_settings", "redact_url"]


MAX_TASK_SECONDS = 30 * 24 * 3600  # a task's time limits and the visibility timeout: 30 days at most
MAX_INTERVAL = 24 * 3600  # heartbeats, leases, reconciliation, grace, retry budget: a day at most (and finite)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cganctl"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CGAN_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir, description="Local folder: SQLite job table, local object store, caches.")
    database_url: str | None = Field(default=None, repr=False, description="SQLAlchemy URL of the job table; default: SQLite under data_dir.")
    broker_url: str | None = Field(default=None, repr=False, description="Celery broker (Redis) URL; unset: jobs run in-process.")

    s3_bucket: str | None = Field(default=None, description="Bucket of the object store; unset: a local folder under data_dir.")
    s3_endpoint_url: str | None = Field(default=None, repr=False, description="S3 endpoint; any credentials in it are never shown.")
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    default_queue: str = "gpu"
    routes: dict[str, str] = Field(default_factory=dict, description='Queue per job kind, JSON, e.g. {"evaluate": "cpu"}.')
    max_count: int = Field(default=1_000_000, gt=0, description="Largest image count one generate job may ask for.")
    max_attempts: int = Field(default=3, ge=1, description="Deliveries of one task before its job is failed.")
    shard_size: int = Field(default=2500, gt=0, description="Default images per generate shard.")
    task_soft_time_limit: int = Field(default=5 * 3600, gt=0, le=MAX_TASK_SECONDS, description="Seconds before a task is asked to save and stop.")
    task_time_limit: int = Field(default=5 * 3600 + 600, gt=0, le=MAX_TASK_SECONDS, description="Seconds before a task is killed; above the soft limit.")
    visibility_timeout: int = Field(default=6 * 3600, gt=0, le=MAX_TASK_SECONDS, description="Redis visibility timeout; longer than the longest task.")
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description="Port of a worker's Prometheus /metrics; unset: no endpoint.")
    heartbeat_interval: float = Field(default=10.0, ge=0.1, le=MAX_INTERVAL, description="Seconds between lease renewals of a running task.")
    lease_timeout: float = Field(default=45.0, gt=0, le=MAX_INTERVAL, description="Seconds without a renewal after which a running task's worker counts as gone.")
    reconcile_interval: float = Field(default=15.0, ge=0.1, le=MAX_INTERVAL, description="Seconds between reconciliation passes (one worker at a time).")
    requeue_grace: float = Field(default=30.0, ge=0, le=MAX_INTERVAL, description="Age after which queued work the broker does not hold is sent again.")
    transient_retry_budget: float = Field(default=600.0, gt=0, le=MAX_INTERVAL, description="Seconds of back-off a task spends on an unavailable service before its job fails.")
    lean_submit: bool = Field(default=True, description="Submit on a PostgreSQL + Redis fleet with psycopg and redis-py alone (no SQLAlchemy, no Celery import).")
    ui_token: SecretStr | None = Field(default=None, description="Token `cganctl ui` requires of every request; needed to bind beyond loopback.")

    # budgets (issue 8): what one submit may cost in time, memory and disk; see README "Security"
    min_shard_size: int = Field(default=10, gt=0, description="Smallest --shard-size (a job smaller than it may use its own size).")
    max_steps: int = Field(default=10_000_000, gt=0, description="Most optimiser steps one train job may ask for.")
    max_checkpoints: int = Field(default=1000, gt=0, description="Checkpoints one train job may write: --checkpoint-every >= steps / this.")
    keep_checkpoints: int = Field(default=3, ge=1, description="Checkpoints kept in the store per train job (plus the final one).")
    max_archive_member_bytes: int = Field(default=64 * 2**20, gt=0, description="Largest file read from a dataset archive or folder.")
    max_image_pixels: int = Field(default=4096 * 4096, gt=0, description="Largest image (width x height) decoded from a dataset.")
    max_image_side: int = Field(default=8192, gt=0, description="Largest width or height of a dataset image.")
    max_total_pixels: int = Field(default=2_000_000_000, gt=0, description="Most pixels decoded from one dataset (about 6 GB as RGB).")
    max_dataset_bytes: int = Field(default=16 * 2**30, gt=0, description="Largest dataset archive read from the object store (registered or s3://), and most bytes any archive unpacks to.")
    max_dataset_entries: int = Field(default=2_000_000, gt=0, description="Most paths one dataset folder walk visits.")
    dataset_roots: list[Path] | None = Field(
        default=None,
        description="Folders a dataset/reference path must lie under (JSON list). Unset: on a fleet <data_dir>/datasets; "
        "on the embedded default any path the user can read.",
    )


    @field_validator("database_url", "broker_url", "s3_bucket", "s3_endpoint_url", "metrics_port", "ui_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _empty_data_dir_is_unset(cls, value: object) -> object:
        """``CGAN_DATA_DIR=`` means the default folder, as an empty value does for every other setting (not the
        current folder, which Path("") would be)."""
        return _default_data_dir() if isinstance(value, str) and not value.strip() else value

    @field_validator("broker_url")
    @classmethod
    def _redis_url_parts(cls, value: str | None) -> str | None:
        """The broker is Redis; a Redis URL's port and database number are numbers (kombu and redis-py read
        them differently otherwise)."""
        if value and not value.startswith(("redis://", "rediss://")):
            raise ValueError("the broker is Redis: a redis:// or rediss:// URL, e.g. redis://host:6379/0")
        if value:
            from urllib.parse import urlsplit

            parts = urlsplit(value)
            try:
                _ = parts.port  # raises on a non-numeric port
            except ValueError:
                raise ValueError("the port is not a number") from None
            db = parts.path.strip("/")
            if db and not (db.isascii() and db.isdigit()):
                raise ValueError("the path must be a database number, e.g. redis://host:6379/0")
        return value

    @field_validator("default_queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        from .submission import QUEUE_NAME

        if not QUEUE_NAME.match(value):
            raise ValueError(f"invalid queue name {value!r}: 1 to 64 letters, digits, '_', '.', '-'")
        return value

    @field_validator("routes")
    @classmethod
    def _route_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        from .specs import JobKind

        kinds = [kind.value for kind in JobKind]
        for kind, queue in value.items():
            if kind not in kinds:
                raise ValueError(f"{kind!r} is not a job kind ({', '.join(kinds)})")
            cls._queue_name(queue)
        return value

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "Settings":
        """A running task renews its lease every heartbeat interval: a lease shorter than two of them runs
        out while its task is alive, and the task is taken for gone."""
        if self.lease_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"CGAN_LEASE_TIMEOUT ({self.lease_timeout:g} s) must be at least twice CGAN_HEARTBEAT_INTERVAL "
                f"({self.heartbeat_interval:g} s), or a live task's lease runs out between its renewals"
            )
        return self

    @model_validator(mode="after")
    def _soft_limit_before_the_hard_one(self) -> "Settings":
        """The soft limit asks a task to save and stop; at the hard one it is killed (or, under --pool solo, its
        lease is let go): a soft limit not below the hard one would never be reached first."""
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                f"CGAN_TASK_SOFT_TIME_LIMIT ({self.task_soft_time_limit} s) must be below CGAN_TASK_TIME_LIMIT "
                f"({self.task_time_limit} s): the soft limit asks a task to stop before the hard one kills it"
            )
        return self

    @model_validator(mode="after")
    def _shard_size_within_its_minimum(self) -> "Settings":
        """The default shard size obeys the floor an explicit --shard-size is held to."""
        if self.shard_size < self.min_shard_size:
            raise ValueError(f"CGAN_SHARD_SIZE ({self.shard_size}) is below CGAN_MIN_SHARD_SIZE ({self.min_shard_size}): raise it, or lower the minimum")
        return self

    def queue_for(self, kind: str) -> str:
        """Where a job of ``kind`` goes without ``--queue``: its route, else the default queue."""
        return self.routes.get(kind, self.default_queue)

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: jobs run in the submitting process."""
        return self.broker_url is None

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'cganctl.db'}"

    def dataset_limits(self):
        """The reading budgets as :class:`cganmodel.limits.DataLimits` (torch-free)."""
        from cganmodel.limits import DataLimits

        return DataLimits(
            member_bytes=self.max_archive_member_bytes, image_pixels=self.max_image_pixels, image_side=self.max_image_side,
            total_pixels=self.max_total_pixels, entries=self.max_dataset_entries, archive_bytes=self.max_dataset_bytes,
        )

    @property
    def allowed_dataset_roots(self) -> list[Path] | None:
        """The roots a dataset path must lie under, or None when any readable path is allowed (embedded default)."""
        if self.dataset_roots:
            return [Path(r).expanduser().resolve() for r in self.dataset_roots]
        return None if self.embedded else [(self.data_dir / "datasets").resolve()]

    @property
    def local_store_dir(self) -> Path:
        return self.data_dir / "objects"

    def make_folder(self, path: Path) -> Path:
        """Create ``path``, a folder under ``data_dir``; one that cannot be made is an invalid CGAN_DATA_DIR."""
        from .errors import InvalidInput

        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror or exc
            raise InvalidInput(f"invalid setting CGAN_DATA_DIR: cannot create {path}: {why}") from None
        return path

    def describe(self) -> dict[str, str]:
        """What `cganctl status` prints: every endpoint, never a secret."""
        return {
            "database": redact_url(self.sqlalchemy_url),
            "broker": redact_url(self.broker_url) if self.broker_url else "none (jobs run in-process)",
            "object store": f"s3://{self.s3_bucket} at {redact_url(self.s3_endpoint_url) or 'AWS'}"
            if self.s3_bucket
            else f"local folder {self.local_store_dir}",
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
