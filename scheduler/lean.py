"""The submit hot path on a fleet (PostgreSQL + Redis), with the two drivers alone (issue 11).

A submit is a short process, and importing SQLAlchemy's ORM, Celery and kombu cost more than all the
rest of it (README, "Measured: submit latency"). So where the job table is PostgreSQL and the broker
is Redis, :class:`scheduler.service.Service` submits through this module: the same rows
(:func:`scheduler.records.new_job_values`), written with psycopg in one transaction, and the same task
messages (:func:`scheduler.taskmessages.redis_message`), pushed with redis-py. Everything else
(workers, following a job, the reconciler, other databases and brokers) goes through SQLAlchemy and
Celery. ``CGAN_LEAN_SUBMIT=false`` turns this path off.

Not sent on this path: Celery's ``task-sent`` event (Flower shows such a task from ``task-received``).
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import psycopg
import redis
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .errors import ServiceUnavailable
from .model_registry import ModelRecord, ModelRegistry
from .records import JobRecord, aware_utc, new_job_values, new_shard_values
from .redact import reason, redact_url
from .settings import Settings
from .taskmessages import TASK_FOR_KIND, broker_priority, redis_list_key, redis_message, task_args

JSON_COLUMNS = {"spec", "progress_info", "metrics", "artifacts", "stats"}  # the JSON columns of jobs and job_shards


def applies(settings: Settings) -> bool:
    """True when a submit can take this path: PostgreSQL job table, Redis broker, not turned off."""
    database, broker = settings.database_url or "", settings.broker_url or ""
    return settings.lean_submit and database.startswith(("postgresql://", "postgresql+psycopg://")) and broker.startswith(("redis://", "rediss://"))




class LeanDatabase:
    """One psycopg connection to the job table, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.shown = redact_url(settings.sqlalchemy_url)
        self._connection: psycopg.Connection | None = None

    @property
    def connection(self) -> psycopg.Connection:
        if self._connection is None:
            url = self.settings.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)
            try:
                connection = psycopg.connect(url, autocommit=True, connect_timeout=5)
            except psycopg.Error as exc:
                raise ServiceUnavailable(f"database {self.shown} is unreachable: {reason(exc)}") from exc
            try:
                self._require_schema(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _require_schema(self, connection: psycopg.Connection) -> None:
        """The schema check of ``scheduler.db.require_schema``: one SELECT compared with the packaged head."""
        from .migrations import head_revision

        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT version_num FROM alembic_version")
                row = cursor.fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
        except psycopg.Error as exc:
            raise ServiceUnavailable(f"database {self.shown} failed: {reason(exc)}") from exc
        if row is None or row[0] != head_revision():
            raise ServiceUnavailable(f"the job table at {self.shown} is not at the current schema; run `cganctl db upgrade`")

    def query_one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        try:
            with self.connection.cursor(row_factory=dict_row) as cursor:
                cursor.execute(sql, tuple(params))  # type: ignore[arg-type]  # the SQL is this module's constants
                return cursor.fetchall()
        except psycopg.Error as exc:
            raise ServiceUnavailable(f"database {self.shown} failed: {reason(exc)}") from exc

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _insert(cursor: psycopg.Cursor, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)  # the columns of records.new_*_values, never user input
    sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"
    cursor.executemany(sql, [tuple(Jsonb(row[c]) if c in JSON_COLUMNS and row[c] is not None else row[c] for c in columns) for row in rows])  # type: ignore[arg-type]


class LeanJobTable:
    """``JobTable.create`` / ``delete`` for a submit, in SQL over psycopg."""

    def __init__(self, db: LeanDatabase) -> None:
        self.db = db

    def create(
        self, spec, *, queue: str, priority: int, max_attempts: int, progress_total: int | None, progress_unit: str,
        shard_counts: Iterable[int] = (), retry_of: str | None = None,
    ) -> JobRecord:
        values = new_job_values(
            spec, queue=queue, priority=priority, max_attempts=max_attempts, progress_total=progress_total, progress_unit=progress_unit, retry_of=retry_of
        )
        connection = self.db.connection
        try:
            with connection.transaction(), connection.cursor() as cursor:
                _insert(cursor, "jobs", [values])
                _insert(cursor, "job_shards", new_shard_values(values["id"], shard_counts))
        except psycopg.Error as exc:
            raise ServiceUnavailable(f"could not write the job row: {reason(exc)}") from exc
        return JobRecord.from_values(values)

    def delete(self, job_id: str) -> None:
        connection = self.db.connection
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM job_shards WHERE job_id = %s", (job_id,))
            cursor.execute("DELETE FROM jobs WHERE id = %s", (job_id,))


class LeanModelRegistry(ModelRegistry):
    """The registry's reads (:meth:`get`, :meth:`registered`) in SQL over psycopg; the rest is inherited."""

    COLUMNS = "name, version, kind, job_id, weights_key, meta, created_at"

    def __init__(self, db: LeanDatabase) -> None:
        self.db = db

    def get(self, name: str, version: int | None = None) -> ModelRecord | None:
        if version:
            row = self.db.query_one(f"SELECT {self.COLUMNS} FROM models WHERE name = %s AND version = %s", (name, version))
        else:
            row = self.db.query_one(f"SELECT {self.COLUMNS} FROM models WHERE name = %s ORDER BY version DESC LIMIT 1", (name,))
        return _model(row) if row else None

    def registered(self) -> list[ModelRecord]:
        return [_model(row) for row in self.db.query(f"SELECT {self.COLUMNS} FROM models ORDER BY name, version")]

    def register(self, **_kwargs: Any) -> ModelRecord:
        raise NotImplementedError("train jobs register models through scheduler.model_registry.ModelRegistry")


def _model(row: dict[str, Any]) -> ModelRecord:
    return ModelRecord(row["name"], row["version"], row["kind"], row["job_id"], row["weights_key"], row["meta"], aware_utc(row["created_at"]))


class RedisDispatcher:
    """``CeleryDispatcher.check`` / ``enqueue`` for a submit: Celery's messages, pushed with redis-py."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.broker_url or ""
        self.shown = redact_url(self.url)
        try:
            self.client = redis.Redis.from_url(self.url, socket_connect_timeout=3, socket_timeout=5)
        except ValueError as exc:  # an option redis-py cannot read
            raise ServiceUnavailable(f"broker {self.shown} is unreachable: {reason(exc)}") from None

    def check(self) -> str:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"broker {self.shown} is unreachable: {reason(exc)}") from exc
        return self.shown

    def enqueue(self, job: JobRecord, shard_count: int) -> None:
        shards = list(range(shard_count)) if job.kind == "generate" else None
        key = redis_list_key(job.queue, broker_priority(job.priority))
        messages = [json.dumps(redis_message(TASK_FOR_KIND[job.kind], args, job.queue, job.priority)) for args in task_args(job.id, shards)]
        try:
            with self.client.pipeline(transaction=True) as pipe:  # all of the job's messages, or none
                for message in messages:
                    pipe.lpush(key, message)
                pipe.execute()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"could not enqueue job {job.id} on {self.shown}: {reason(exc)}") from exc

    def wait_local(self) -> None:
        """Nothing runs here: workers elsewhere execute the job."""


class LeanSubmit:
    """What ``Service.submit`` writes and sends through on the lean path."""

    def __init__(self, settings: Settings) -> None:
        self.db = LeanDatabase(settings)
        self.table = LeanJobTable(self.db)
        self.models = LeanModelRegistry(self.db)
        self.dispatcher = RedisDispatcher(settings)
