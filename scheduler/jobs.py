"""The job table: rows, atomic state transitions, progress and shards (models: ``model_registry``).

Every transition is one conditional ``UPDATE ... WHERE status IN (...)``: whichever delivery of a task
gets there first wins, and a duplicate or late delivery can never move a finished job backwards.
"""
from __future__ import annotations

import builtins
import enum
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .db import Job, ServiceLease, Shard
from .errors import InvalidInput, NotFound, ServiceUnavailable
from .records import JobRecord, ShardRecord, aware_utc, new_job_values, new_shard_values, utcnow
from .specs import FINISHED, SHARD_FINAL, JobStatus, ShardStatus

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


class Claim(str, enum.Enum):
    """Outcome of trying to start (a shard of) a job."""

    ok = "ok"  # claimed: run it
    finished = "finished"  # the job (or this shard) already ended
    cancelled = "cancelled"  # a cancel was asked for: now marked cancelled
    exhausted = "exhausted"  # the attempt cap is reached: the job is now failed
    missing = "missing"  # no such job (or shard) row
    busy = "busy"  # another delivery holds a live lease on it: this duplicate is dropped


def continues(owner: str | None, token: str) -> bool:
    """True when ``token`` ("<delivery id>:<retry number>") is a later retry of the delivery holding ``owner``.

    Celery's own retry keeps the task id and counts up ``retries``: it continues the same attempt. A
    redelivery of the very same message (its worker died: same id, same retry number) does not: it is a
    new attempt, and refused while the lease it would take over is live.
    """
    if not owner:
        return False
    owner_id, _, owner_n = owner.rpartition(":")
    token_id, _, token_n = token.rpartition(":")
    return bool(owner_id) and owner_id == token_id and owner_n.isdigit() and token_n.isdigit() and int(token_n) > int(owner_n)


def lease_live(expires_at: datetime | None, now: datetime | None = None) -> bool:
    expires = aware_utc(expires_at)
    return expires is not None and expires > (now or utcnow())


class JobTable:
    def __init__(self, engine: Engine, lease_timeout: float = 45.0) -> None:
        self.engine = engine
        self.lease_timeout = lease_timeout

    def _lease_until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_timeout)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _write(self, statement) -> int:
        try:
            with self.engine.begin() as connection:
                return connection.execute(statement).rowcount
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(f"job table write failed: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc

    # --- rows -------------------------------------------------------------------------------------
    def create(
        self,
        spec,
        *,
        queue: str,
        priority: int,
        max_attempts: int,
        progress_total: int | None,
        progress_unit: str,
        shard_counts: Iterable[int] = (),
        retry_of: str | None = None,
    ) -> JobRecord:
        values = new_job_values(
            spec, queue=queue, priority=priority, max_attempts=max_attempts, progress_total=progress_total, progress_unit=progress_unit, retry_of=retry_of
        )
        try:
            with self._session() as session, session.begin():
                session.add(Job(**values))
                session.flush()
                session.add_all(Shard(**shard) for shard in new_shard_values(values["id"], shard_counts))
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(f"could not write the job row: {exc}".splitlines()[0]) from exc
        return JobRecord.from_values(values)

    def delete(self, job_id: str) -> None:
        """Remove a row whose task could not be enqueued (its shards go with it)."""
        with self._session() as session, session.begin():
            session.query(Shard).filter(Shard.job_id == job_id).delete()
            session.query(Job).filter(Job.id == job_id).delete()

    def get(self, job_id: str) -> JobRecord:
        """One job by its id or by a unique prefix of it (at least 4 characters)."""
        with self._session() as session:
            row = session.get(Job, job_id)
            if row is None and 4 <= len(job_id) < 32:
                rows = session.scalars(select(Job).where(Job.id.startswith(job_id, autoescape=True)).limit(2)).all()
                if len(rows) > 1:
                    raise InvalidInput(f"job id prefix {job_id!r} is ambiguous")
                row = rows[0] if rows else None
            if row is None:
                short = " (a prefix needs at least 4 characters)" if len(job_id) < 4 else ""
                raise NotFound(f"no job {job_id!r}{short}")
            return JobRecord.from_row(row)

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 20) -> list[JobRecord]:
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if status:
            query = query.where(Job.status == status)
        if kind:
            query = query.where(Job.kind == kind)
        with self._session() as session:
            return [JobRecord.from_row(r) for r in session.scalars(query)]

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Queued and running jobs per queue (the queues of unfinished jobs only), sorted by queue."""
        active = (JobStatus.queued.value, JobStatus.running.value)
        depths: dict[str, dict[str, int]] = {}
        with self._session() as session:
            rows = session.execute(select(Job.queue, Job.status, func.count()).where(Job.status.in_(active)).group_by(Job.queue, Job.status))
            for queue, status, count in rows:
                depths.setdefault(queue, dict.fromkeys(active, 0))[status] = count
        return dict(sorted(depths.items()))

    def retries_of(self, job_id: str) -> builtins.list[tuple[str, str]]:
        """(id, status) of the jobs submitted as retries of ``job_id``, oldest first."""
        with self._session() as session:
            return [(i, s) for i, s in session.execute(select(Job.id, Job.status).where(Job.retry_of == job_id).order_by(Job.created_at))]

    def running_workers(self) -> set[str]:
        """Names of the workers that run a job or a shard now, from the job table."""
        running = JobStatus.running.value
        with self._session() as session:
            jobs = session.scalars(select(Job.worker).where(Job.status == running, Job.worker.is_not(None)))
            shards = session.scalars(select(Shard.worker).where(Shard.status == ShardStatus.running.value, Shard.worker.is_not(None)))
            return {name for name in (*jobs, *shards) if name}

    def _expired_queries(self, job_id: str | None = None):
        """Running work whose lease ran out that no reconciler has taken back yet: (jobs, shards) queries."""
        now = utcnow()
        running = JobStatus.running.value
        jobs = select(Job.id, Job.worker, Job.heartbeat_at).where(Job.status == running, Job.kind != "generate", Job.lease_expires_at < now)
        shards = (
            select(Shard.job_id, Shard.index, Shard.worker, Shard.heartbeat_at)
            .join(Job, Job.id == Shard.job_id)
            .where(Shard.status == ShardStatus.running.value, Shard.lease_expires_at < now, Job.status.in_(ACTIVE))
        )
        if job_id is not None:
            jobs, shards = jobs.where(Job.id == job_id), shards.where(Shard.job_id == job_id)
        return now, jobs, shards

    def expired_leases(self, limit: int = 50, job_id: str | None = None) -> builtins.list[dict]:
        """Running work whose lease ran out (its worker stopped renewing it) that no reconciler has taken
        back yet (of one job, or of all): job id, shard index (None for a train/evaluate job), worker,
        seconds since its last heartbeat."""
        now, job_query, shard_query = self._expired_queries(job_id)
        with self._session() as session:
            jobs = session.execute(job_query.limit(limit)).all()
            shards = session.execute(shard_query.limit(limit)).all()

        def silent(beat) -> float | None:
            if beat is None:
                return None
            return round((now - (beat if beat.tzinfo else beat.replace(tzinfo=timezone.utc))).total_seconds(), 1)

        rows = [{"job": j, "shard": None, "worker": w, "silent_s": silent(b)} for j, w, b in jobs]
        rows += [{"job": j, "shard": i, "worker": w, "silent_s": silent(b)} for j, i, w, b in shards]
        return rows[:limit]

    def count_expired_leases(self) -> int:
        """How many running jobs and shards have a lease that ran out (a COUNT, for the metrics scrape)."""
        _, job_query, shard_query = self._expired_queries()
        with self._session() as session:
            return sum(session.scalar(select(func.count()).select_from(query.subquery())) or 0 for query in (job_query, shard_query))

    # --- transitions ------------------------------------------------------------------------------
    def _runnable(self, job_id: str) -> JobRecord | Claim:
        """The job if a delivery of its task may run, else why not."""
        job = self._get_or_none(job_id)
        if job is None:
            return Claim.missing
        if job.finished:
            return Claim.finished
        if job.cancel_requested:
            self.mark_cancelled(job_id)
            return Claim.cancelled
        return job

    def claim(self, job_id: str, worker: str, token: str | None = None) -> Claim:
        """A delivery of a job's task starts: queued/running -> running, one more attempt, a fresh lease.

        ``token`` names the delivery (``<Celery task id>:<retries>``): the same task coming back through
        its own retry after a transient error re-claims without counting an attempt (:func:`continues`);
        any other delivery is refused while a live lease is held (``Claim.busy``) and counts an attempt.
        """
        token = token or worker
        job = self._runnable(job_id)
        if isinstance(job, Claim):
            return job
        now = utcnow()
        same = continues(job.lease_owner, token)
        if not same and lease_live(job.lease_expires_at, now):
            return Claim.busy
        if not same and job.attempts >= job.max_attempts:
            self.fail(job_id, f"gave up after {job.attempts} attempts (worker lost or task redelivered)")
            return Claim.exhausted
        changed = self._write(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_(ACTIVE),
                Job.attempts == job.attempts,
                or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now, Job.lease_owner == (job.lease_owner if same else None)),
            )
            .values(
                status=JobStatus.running.value,
                attempts=Job.attempts + (0 if same else 1),
                worker=worker,
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
                error=None,
                lease_owner=token,
                lease_expires_at=self._lease_until(now),
                heartbeat_at=now,
            )
        )
        return Claim.ok if changed else self.claim(job_id, worker, token)

    def claim_shard(self, job_id: str, index: int, worker: str, token: str | None = None) -> Claim:
        """Like :meth:`claim` for one shard; the job turns running with its first shard."""
        token = token or worker
        job = self._runnable(job_id)
        if isinstance(job, Claim):
            return job
        with self._session() as session:
            shard = session.get(Shard, (job_id, index))
        if shard is None:
            return Claim.missing
        if shard.status in SHARD_FINAL:
            return Claim.finished
        now = utcnow()
        same = continues(shard.lease_owner, token)
        if not same and lease_live(shard.lease_expires_at, now):
            return Claim.busy
        if not same and shard.attempts >= job.max_attempts:
            self.fail(job_id, f"shard {index} gave up after {shard.attempts} attempts (worker lost or task redelivered)")
            return Claim.exhausted
        changed = self._write(
            update(Shard)
            .where(
                Shard.job_id == job_id,
                Shard.index == index,
                Shard.status.not_in(SHARD_FINAL),
                Shard.attempts == shard.attempts,
                or_(Shard.lease_expires_at.is_(None), Shard.lease_expires_at <= now, Shard.lease_owner == (shard.lease_owner if same else None)),
            )
            .values(
                status=ShardStatus.running.value,
                attempts=Shard.attempts + (0 if same else 1),
                worker=worker,
                started_at=now,
                done=0,
                error=None,
                lease_owner=token,
                lease_expires_at=self._lease_until(now),
                heartbeat_at=now,
            )
        )
        if not changed:
            return self.claim_shard(job_id, index, worker, token)
        attempts = shard.attempts + (0 if same else 1)
        self._write(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(ACTIVE))
            .values(
                status=JobStatus.running.value,
                started_at=func.coalesce(Job.started_at, now),
                attempts=func.max(Job.attempts, attempts) if self._sqlite else func.greatest(Job.attempts, attempts),
                worker=worker,
                updated_at=now,
            )
        )
        return Claim.ok

    # --- leases -----------------------------------------------------------------------------------
    def renew_lease(self, job_id: str, token: str, shard: int | None = None) -> bool:
        """The heartbeat: push the lease forward; False once this delivery no longer holds it.

        A job the reconciler took back (its lease ran out while the table did not answer, so no heartbeat could be
        written) but that no other delivery claimed is still this delivery's: the renewal makes it ``running``
        again, and the delivery sent meanwhile finds it busy, then done, instead of redoing its work."""
        now = utcnow()
        values: dict[str, Any] = {"lease_expires_at": self._lease_until(now), "heartbeat_at": now}
        if shard is None:
            statement = update(Job).where(Job.id == job_id, Job.lease_owner == token, Job.status.in_(ACTIVE))
            values["status"] = JobStatus.running.value
        else:
            statement = update(Shard).where(
                Shard.job_id == job_id, Shard.index == shard, Shard.lease_owner == token, Shard.status == ShardStatus.running.value
            )
        return bool(self._write(statement.values(**values)))

    def take_lease(self, job_id: str, token: str) -> None:
        """The embedded dispatcher holds the job's lease while its thread runs the job's shards."""
        now = utcnow()
        self._write(update(Job).where(Job.id == job_id).values(lease_owner=token, lease_expires_at=self._lease_until(now), heartbeat_at=now))

    def release_lease(self, job_id: str, token: str, shard: int | None = None) -> None:
        if shard is None:
            statement = update(Job).where(Job.id == job_id, Job.lease_owner == token)
        else:
            statement = update(Shard).where(Shard.job_id == job_id, Shard.index == shard, Shard.lease_owner == token)
        self._write(statement.values(lease_expires_at=None))

    def live_leases(self, job_id: str) -> bool:
        """True while a delivery is known to be running the job (or one of its shards)."""
        job = self.get(job_id)
        now = utcnow()
        if lease_live(job.lease_expires_at, now):
            return True
        return any(s.status == ShardStatus.running.value and lease_live(s.lease_expires_at, now) for s in self.shards(job.id))

    def mark_sent(self, job_id: str) -> None:
        self._write(update(Job).where(Job.id == job_id).values(sent_at=utcnow()))

    def hold_duty(self, name: str, owner: str, seconds: float) -> bool:
        """Take or keep the service lease ``name`` (e.g. the reconciler) for ``seconds``; False if another holds it."""
        now = utcnow()
        until = now + timedelta(seconds=seconds)
        if self._write(
            update(ServiceLease)
            .where(ServiceLease.name == name, or_(ServiceLease.owner == owner, ServiceLease.expires_at <= now))
            .values(owner=owner, expires_at=until)
        ):
            return True
        try:
            with self._session() as session, session.begin():
                if session.get(ServiceLease, name) is not None:
                    return False
                session.add(ServiceLease(name=name, owner=owner, expires_at=until))
        except SQLAlchemyError:  # another process inserted it first
            return False
        return True

    @property
    def _sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def progress(self, job_id: str, done: int, total: int | None = None, info: dict | None = None) -> None:
        values: dict[str, Any] = {"progress_done": done, "updated_at": utcnow()}
        if total is not None:
            values["progress_total"] = total
        if info is not None:
            values["progress_info"] = info
        self._write(update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value).values(**values))

    def shard_progress(self, job_id: str, index: int, done: int) -> None:
        """Record one shard's images done; the job's progress is the sum over its shards."""
        self._write(update(Shard).where(Shard.job_id == job_id, Shard.index == index, Shard.status == ShardStatus.running.value).values(done=done))
        self._sync_job_progress(job_id)

    def _sync_job_progress(self, job_id: str) -> None:
        total_done = select(func.coalesce(func.sum(Shard.done), 0)).where(Shard.job_id == job_id).scalar_subquery()
        self._write(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running.value)
            .values(progress_done=total_done, updated_at=utcnow())
        )

    def finish_shard(self, job_id: str, index: int, *, key: str, sha256: str, size: int, stats: dict, token: str | None = None) -> bool:
        """A running shard succeeded; with ``token``, only while that delivery still holds its lease."""
        statement = update(Shard).where(Shard.job_id == job_id, Shard.index == index, Shard.status == ShardStatus.running.value)
        if token is not None:
            statement = statement.where(Shard.lease_owner == token)
        changed = self._write(
            statement
            .values(
                status=ShardStatus.succeeded.value, done=Shard.count, key=key, sha256=sha256, size=size, stats=stats,
                finished_at=utcnow(), lease_expires_at=None,
            )
        )
        self._sync_job_progress(job_id)
        return bool(changed)

    def fail_shard(self, job_id: str, index: int, error: str, status: ShardStatus = ShardStatus.failed) -> None:
        self._write(
            update(Shard)
            .where(Shard.job_id == job_id, Shard.index == index, Shard.status.not_in(SHARD_FINAL))
            .values(status=status.value, error=error, finished_at=utcnow(), lease_expires_at=None)
        )

    def expire_leases(self, job_id: str) -> None:
        """The process that held the job's leases is known to be gone: they run out now, not at their time."""
        now = utcnow()
        self._write(update(Job).where(Job.id == job_id, Job.lease_expires_at > now).values(lease_expires_at=now))
        self._write(update(Shard).where(Shard.job_id == job_id, Shard.lease_expires_at > now).values(lease_expires_at=now))

    def end_open_shards(self, job_id: str, status: ShardStatus, error: str) -> int:
        """A job ended: every shard not final (and not running under a live lease) becomes ``status``."""
        now = utcnow()
        return self._write(
            update(Shard)
            .where(
                Shard.job_id == job_id,
                Shard.status.not_in(SHARD_FINAL),
                or_(Shard.status != ShardStatus.running.value, Shard.lease_expires_at.is_(None), Shard.lease_expires_at <= now),
            )
            .values(status=status.value, error=error, finished_at=now, lease_expires_at=None)
        )

    def shards(self, job_id: str) -> builtins.list[ShardRecord]:
        with self._session() as session:
            rows = session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index))
            return [ShardRecord.from_row(r) for r in rows]

    def succeed(self, job_id: str, *, metrics: dict | None, artifacts: dict | None, token: str | None = None) -> bool:
        """A running job succeeded; with ``token``, only while that delivery still holds its lease (then also a job
        the reconciler took back to ``queued`` that no other delivery claimed: the work is this delivery's)."""
        now = utcnow()
        if token is not None:
            statement = update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE), Job.lease_owner == token)
        else:
            statement = update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value)
        return bool(
            self._write(
                statement
                .values(status=JobStatus.succeeded.value, finished_at=now, updated_at=now, metrics=metrics, artifacts=artifacts, lease_expires_at=None)
            )
        )

    def fail(self, job_id: str, error: str, *, ended_at: datetime | None = None) -> bool:
        """An active job failed; ``ended_at``: when it really stopped, where that is known to be earlier than
        now (a process that died: its last heartbeat), so that its run time is not the time until noticed."""
        now = utcnow()
        return bool(
            self._write(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(ACTIVE))
                .values(status=JobStatus.failed.value, error=error[:4000], finished_at=ended_at or now, updated_at=now, lease_expires_at=None)
            )
        )

    def request_cancel(self, job_id: str) -> str:
        """Cancel: a queued job at once; a running one is flagged and stops at its next step boundary."""
        now = utcnow()
        if self._write(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued.value)
            .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now, updated_at=now)
        ):
            return JobStatus.cancelled.value
        if self._write(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value).values(cancel_requested=True, updated_at=now)
        ):
            return "cancelling"
        return self.get(job_id).status

    def mark_cancelled(self, job_id: str) -> bool:
        now = utcnow()
        return bool(
            self._write(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(ACTIVE))
                .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now, updated_at=now, lease_expires_at=None)
            )
        )

    def should_stop(self, job_id: str) -> bool:
        """True once a cancel was asked for or the job ended elsewhere (another shard failed it)."""
        with self._session() as session:
            row = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == job_id)).one_or_none()
        return row is None or row.cancel_requested or row.status in FINISHED

    def _get_or_none(self, job_id: str) -> JobRecord | None:
        with self._session() as session:
            row = session.get(Job, job_id)
            return JobRecord.from_row(row) if row else None
