"""Reconciliation: the job table is the truth, the broker only delivers.

One pass (:meth:`Reconciler.run_once`) compares the table with what is running and what the broker holds:

1. **Expired leases** — a running job (train/evaluate) or shard (generate) whose lease ran out lost its
   worker: it goes back to ``queued``/``pending`` and its message is sent again (the attempt is counted
   when a delivery claims it); past the attempt cap the job fails with a clear error; a job whose cancel
   was asked for is marked cancelled at once.
2. **Lost messages** — queued work older than ``requeue_grace`` that the broker does not hold (Redis was
   restarted without persistence, ``submit`` died between the row and the message) is sent again.
   Duplicates are harmless: a claim is a conditional update, a shard that succeeded is never rerun and a
   delivery finding a live lease held by another is dropped (``Claim.busy``).
3. **Missing manifest** — a generate job whose shards all succeeded but which is still active (its worker
   died while writing the manifest) is finalised (``finalize`` callback: needs the worker's imports).
4. **Cleanup** — a failed or cancelled generate job with shard rows not final is closed
   (:mod:`scheduler.cleanup`).

Who runs it: every ``cganctl worker`` starts a thread on ``worker_ready`` that runs a pass every
``reconcile_interval`` seconds while it holds the ``reconciler`` row of ``service_leases`` (taken or
renewed by a conditional update, held for three intervals): one worker reconciles at a time, another
takes over within ~3 intervals when it dies. No extra process to deploy.

On the embedded default (no broker, jobs run in the CLI process) there is nobody to re-send to: every
CLI command that reads jobs runs :func:`embedded_pass`, which fails a job whose process stopped
renewing its lease ("the process running it stopped"), so ``jobs retry``/``cancel``/``watch`` work.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import socket
from datetime import timedelta, timezone
from typing import Callable

from sqlalchemy import and_, func, or_, select, update

from . import cleanup
from .db import Job, Shard, utcnow
from .jobs import ACTIVE, JobRecord
from .runtime import Runtime
from .specs import SHARD_FINAL, JobStatus, ShardStatus

log = logging.getLogger(__name__)

BATCH = 500
DUTY = "reconciler"
Send = Callable[[JobRecord, "list[int] | None"], None]


def broker_tasks(broker_url: str | None, queues: set[str]) -> set[tuple[str, int | None]] | None:
    """Every ``(job_id, shard_index_or_None)`` the Redis broker holds (queued or delivered, unacked).

    ``None`` when the broker is not Redis or cannot be read (then nothing is judged lost).
    """
    if not broker_url or not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    from .taskmessages import priority_lists

    try:
        client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        payloads: list = []
        for queue in queues:
            for key in priority_lists(queue):
                payloads.extend(client.lrange(key, 0, -1))
        for value in client.hvals("unacked"):
            try:
                payloads.append(json.dumps(json.loads(value)[0]).encode())
            except (ValueError, IndexError, TypeError):
                continue
    except redis.RedisError as exc:
        log.warning("reconcile: broker not readable: %s", exc)
        return None
    held: set[tuple[str, int | None]] = set()
    for payload in payloads:
        try:
            message = json.loads(payload)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            held.add((str(args[0]), int(args[1]) if len(args) > 1 else None))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return held


class Reconciler:
    def __init__(
        self,
        runtime: Runtime,
        send: Send | None,
        finalize: Callable[[JobRecord], object] | None = None,
        owner: str = "reconciler",
    ) -> None:
        self.runtime = runtime
        self.send = send
        self.finalize = finalize
        self.owner = owner

    @property
    def table(self):
        return self.runtime.table

    def hold_duty(self) -> bool:
        return self.table.hold_duty(DUTY, self.owner, 3 * self.runtime.settings.reconcile_interval)

    def run_once(self) -> list[str]:
        """One pass; returns what it did (one line per action, for logs and tests)."""
        actions: list[str] = []
        actions += self._expired_jobs()
        actions += self._expired_shards()
        if self.send is not None:
            actions += self._lost_messages()
        if self.finalize is not None:
            actions += self._missing_manifests()
        actions += self._cleanups()
        for line in actions:
            log.warning("reconcile: %s", line)
        return actions

    # --- 1. expired leases ------------------------------------------------------------------------
    def _lost_reason(self, worker: str | None, expires) -> str:
        if self.send is None:
            return f"the process running it stopped (no heartbeat since {expires:%Y-%m-%d %H:%M:%S} UTC)"
        return f"its worker {worker or '?'} stopped renewing its lease"

    def _expired_jobs(self) -> list[str]:
        now = utcnow()
        with self.table.engine.connect() as c:
            rows = c.execute(
                select(Job.id, Job.lease_expires_at, Job.worker)
                .where(Job.status == JobStatus.running.value, Job.kind != "generate", Job.lease_expires_at <= now)
                .limit(BATCH)
            ).all()
        actions = []
        for job_id, expires, worker in rows:
            job = self.table.get(job_id)
            reason = self._lost_reason(worker, expires)
            if job.cancel_requested:
                self.table.mark_cancelled(job_id)
                actions.append(f"job {job_id}: cancelled ({reason})")
            elif self.send is None or job.attempts >= job.max_attempts:
                self.table.fail(job_id, f"gave up after {job.attempts} attempts: {reason}" if self.send else reason)
                actions.append(f"job {job_id}: failed ({reason})")
            elif self.table._write(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.lease_expires_at == expires)
                .values(status=JobStatus.queued.value, lease_expires_at=None, sent_at=utcnow(), updated_at=utcnow())
            ):
                self.send(job, None)
                actions.append(f"job {job_id}: re-sent ({reason})")
        return actions

    def _expired_shards(self) -> list[str]:
        now = utcnow()
        with self.table.engine.connect() as c:
            rows = c.execute(
                select(Shard.job_id, Shard.index, Shard.lease_expires_at, Shard.worker, Shard.attempts)
                .join(Job, Job.id == Shard.job_id)
                .where(Shard.status == ShardStatus.running.value, Shard.lease_expires_at <= now, Job.status.in_(ACTIVE))
                .limit(BATCH)
            ).all()
        actions = []
        for job_id, index, expires, worker, attempts in rows:
            job = self.table.get(job_id)
            reason = self._lost_reason(worker, expires)
            if job.cancel_requested:
                self.table.mark_cancelled(job_id)
                actions.append(f"job {job_id}: cancelled ({reason})")
            elif self.send is None or attempts >= job.max_attempts:
                self.table.fail_shard(job_id, index, reason)
                self.table.fail(job_id, f"shard {index} gave up after {attempts} attempts: {reason}" if self.send else reason)
                actions.append(f"job {job_id} shard {index}: failed ({reason})")
            elif self.table._write(
                update(Shard)
                .where(Shard.job_id == job_id, Shard.index == index, Shard.status == ShardStatus.running.value, Shard.lease_expires_at == expires)
                .values(status=ShardStatus.pending.value, lease_expires_at=None, done=0)
            ):
                self.table.mark_sent(job_id)
                self.send(job, [index])
                actions.append(f"job {job_id} shard {index}: re-sent ({reason})")
        return actions

    # --- 2. messages the broker lost ---------------------------------------------------------------
    def _lost_messages(self) -> list[str]:
        assert self.send is not None
        settings = self.runtime.settings
        cutoff = utcnow() - timedelta(seconds=settings.requeue_grace)
        sent = func.coalesce(Job.sent_at, Job.created_at)
        with self.table.engine.connect() as c:
            jobs = c.execute(
                select(Job.id, Job.kind, Job.queue)
                .where(Job.status.in_(ACTIVE), Job.cancel_requested.is_(False), sent <= cutoff)
                .where(or_(and_(Job.kind != "generate", Job.status == JobStatus.queued.value), Job.kind == "generate"))
                .limit(BATCH)
            ).all()
            pending: dict[str, list[int]] = {}
            generate_ids = [j.id for j in jobs if j.kind == "generate"]
            if generate_ids:
                for job_id, index in c.execute(
                    select(Shard.job_id, Shard.index).where(Shard.job_id.in_(generate_ids), Shard.status == ShardStatus.pending.value)
                ):
                    pending.setdefault(job_id, []).append(index)
        if not jobs:
            return []
        held = broker_tasks(settings.broker_url, {j.queue for j in jobs} | {settings.default_queue})
        if held is None:
            return []
        actions = []
        for job_id, kind, _queue in jobs:
            if kind == "generate":
                lost = [i for i in sorted(pending.get(job_id, [])) if (job_id, i) not in held]
                if not lost:
                    continue
                job = self.table.get(job_id)
                self.table.mark_sent(job_id)
                self.send(job, lost)
                actions.append(f"job {job_id}: re-sent {len(lost)} shard message(s) the broker did not hold")
            elif (job_id, None) not in held:
                job = self.table.get(job_id)
                self.table.mark_sent(job_id)
                self.send(job, None)
                actions.append(f"job {job_id}: re-sent its message (the broker did not hold it)")
        return actions

    # --- 3. all shards in, no manifest --------------------------------------------------------------
    def _missing_manifests(self) -> list[str]:
        assert self.finalize is not None
        cutoff = utcnow() - timedelta(seconds=self.runtime.settings.lease_timeout)
        open_shards = select(Shard.job_id).where(Shard.status != ShardStatus.succeeded.value)
        with self.table.engine.connect() as c:
            ids = c.scalars(
                select(Job.id)
                .where(Job.kind == "generate", Job.status.in_(ACTIVE), Job.updated_at <= cutoff, Job.id.not_in(open_shards))
                .limit(BATCH)
            ).all()
        actions = []
        for job_id in ids:
            job = self.table.get(job_id)
            if self.table.shards(job_id):
                self.finalize(job)
                actions.append(f"job {job_id}: every shard succeeded; wrote the missing manifest")
        return actions

    # --- 4. cleanup ---------------------------------------------------------------------------------
    def _cleanups(self) -> list[str]:
        now = utcnow()
        with self.table.engine.connect() as c:
            ids = c.scalars(
                select(Shard.job_id)
                .join(Job, Job.id == Shard.job_id)
                .where(
                    Job.status.in_((JobStatus.failed.value, JobStatus.cancelled.value)),
                    Shard.status.not_in(SHARD_FINAL),
                    or_(Shard.lease_expires_at.is_(None), Shard.lease_expires_at <= now),
                )
                .distinct()
                .limit(BATCH)
            ).all()
        actions = []
        for job_id in ids:
            deleted = cleanup.close_unsuccessful(self.runtime, self.table.get(job_id))
            actions.append(f"job {job_id}: closed its open shards, deleted {deleted} partial object(s)")
        return actions


def _inline_prefix() -> str:
    return f"inline@{socket.gethostname()}:"


def inline_worker_name() -> str:
    """The worker name of a job run in-process (the embedded default, ``worker.execute`` without Celery)."""
    return f"{_inline_prefix()}{os.getpid()}"


def _gone_from_this_host(worker: str | None) -> bool:
    """True for an in-process runner of this host whose process no longer exists (a reused pid reads as
    alive: then the lease decides, as for any other worker)."""
    prefix = _inline_prefix()
    if not worker or not worker.startswith(prefix) or not worker[len(prefix):].isdigit():
        return False
    try:
        os.kill(int(worker[len(prefix):]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def embedded_pass(runtime: Runtime) -> list[str]:
    """The embedded default's pass (run by CLI commands that read jobs): fail jobs whose process died.

    A job is abandoned when neither it nor any of its shards holds a live lease and its row has not
    moved for ``lease_timeout`` seconds, or at once when the process of this host that ran it is gone
    (a killed ``cganctl submit ... --wait``).
    """
    table = runtime.table
    now = utcnow()
    cutoff = now - timedelta(seconds=runtime.settings.lease_timeout)
    live_shard = select(Shard.job_id).where(Shard.status == ShardStatus.running.value, Shard.lease_expires_at > now)
    with table.engine.connect() as c:
        rows: list[tuple] = [tuple(row) for row in c.execute(
            select(Job.id, Job.heartbeat_at, Job.updated_at)
            .where(
                Job.status.in_(ACTIVE),
                Job.updated_at <= cutoff,
                or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now),
                Job.id.not_in(live_shard),
            )
            .limit(BATCH)
        )]
        here = f"{_inline_prefix()}%"
        running = c.execute(
            select(Job.id, Job.heartbeat_at, Job.updated_at, Job.worker, Shard.worker)
            .outerjoin(Shard, and_(Shard.job_id == Job.id, Shard.status == ShardStatus.running.value))
            .where(Job.status == JobStatus.running.value, or_(Job.worker.like(here), Shard.worker.like(here)))
            .limit(BATCH)
        ).all()
    runners: dict[str, list[str]] = {}
    for job_id, _, _, job_worker, shard_worker in running:
        runners.setdefault(job_id, []).extend(w for w in (job_worker, shard_worker) if w)
    known = {row[0] for row in rows}
    for job_id, heartbeat_at, updated_at, *_ in running:
        if job_id not in known and runners[job_id] and all(_gone_from_this_host(w) for w in runners[job_id]):
            known.add(job_id)
            table.expire_leases(job_id)
            rows.append((job_id, heartbeat_at, updated_at))
    actions = []
    for job_id, heartbeat_at, updated_at in rows:
        last = heartbeat_at or updated_at
        last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
        message = f"the process running it stopped (no heartbeat since {last:%Y-%m-%d %H:%M:%S} UTC)"
        job = table.get(job_id)
        if job.cancel_requested:
            table.mark_cancelled(job_id)
        else:
            table.fail(job_id, message, ended_at=last)
        cleanup.close_unsuccessful(runtime, table.get(job_id))
        actions.append(f"job {job_id}: {message}")
    return actions
