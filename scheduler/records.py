"""What a job row and a shard row hold, as plain records: no SQLAlchemy here.

The ORM table (``scheduler.jobs``) and the submit hot path (``scheduler.lean``) both read rows into these
records and write fresh rows from :func:`new_job_values` / :func:`new_shard_values`, so there is one
rule for what a new job looks like, whichever way it is written.
"""
from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

from .specs import FINISHED, JobStatus, ShardStatus, parse_spec

JOB_TIMES = ("created_at", "started_at", "finished_at", "updated_at", "lease_expires_at", "heartbeat_at", "sent_at")
SHARD_TIMES = ("started_at", "finished_at", "lease_expires_at", "heartbeat_at")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware_utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from the table as timezone-aware UTC (SQLite returns naive values)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def new_job_values(
    spec: Any, *, queue: str, priority: int, max_attempts: int, progress_total: int | None, progress_unit: str, retry_of: str | None = None
) -> dict[str, Any]:
    """The columns of a freshly submitted job (queued, nothing done yet); the rest start NULL."""
    now = utcnow()
    return dict(
        id=uuid.uuid4().hex, kind=spec.kind, status=JobStatus.queued.value, queue=queue, priority=priority,
        spec=spec.model_dump(mode="json"), created_at=now, updated_at=now, attempts=0, max_attempts=max_attempts,
        progress_done=0, progress_total=progress_total, progress_unit=progress_unit, cancel_requested=False, retry_of=retry_of,
    )


def new_shard_values(job_id: str, shard_counts: Iterable[int]) -> list[dict[str, Any]]:
    """The shard rows of a new generate job: one pending row per shard, in order."""
    return [dict(job_id=job_id, index=i, status=ShardStatus.pending.value, count=n, done=0, attempts=0) for i, n in enumerate(shard_counts)]


def status_phrase(status: str) -> str:
    """``job X <phrase>``: "is queued", "is running", "succeeded", "failed", "was cancelled"."""
    return {"queued": "is queued", "running": "is running", "cancelled": "was cancelled"}.get(status, status)


# Maps keyed by class name, given back in class order (sorted by name: the model's class order, as
# ImageFolder sorts its classes), whatever order the table kept them in.
CLASS_KEYED = (("spec", "counts"), ("metrics", "per_class"), ("metrics", "count_per_class"), ("metrics", "acceptance"))


@dataclasses.dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    status: str
    queue: str
    priority: int
    spec: dict
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    attempts: int
    max_attempts: int
    worker: str | None
    progress_done: int
    progress_total: int | None
    progress_unit: str | None
    progress_info: dict | None
    error: str | None
    metrics: dict | None
    artifacts: dict | None
    cancel_requested: bool
    retry_of: str | None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    heartbeat_at: datetime | None = None
    sent_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> "JobRecord":
        return cls.from_values({f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "JobRecord":
        """A record from column values (columns a fresh row leaves NULL may be missing)."""
        data: dict[str, Any] = {f.name: values.get(f.name) for f in dataclasses.fields(cls)}
        for name in JOB_TIMES:
            data[name] = aware_utc(data[name])
        for column, key in CLASS_KEYED:  # PostgreSQL's JSONB kept them in its own key order (by length)
            obj = data.get(column)
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                data[column] = {**obj, key: dict(sorted(obj[key].items()))}
        return cls(**data)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def parsed_spec(self):
        return parse_spec(self.spec)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in JOB_TIMES:
            data[name] = data[name].isoformat() if data[name] else None
        return data


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    job_id: str
    index: int
    status: str
    count: int
    done: int
    attempts: int
    worker: str | None
    key: str | None
    sha256: str | None
    size: int | None
    stats: dict | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    heartbeat_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> "ShardRecord":
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        for name in SHARD_TIMES:
            values[name] = aware_utc(values[name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in SHARD_TIMES:
            data[name] = data[name].isoformat() if data[name] else None
        return data
