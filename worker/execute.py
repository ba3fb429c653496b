"""Running one task of a job: claim it in the table, call the job kind's runner, record the outcome.

Shared by the Celery tasks and by the embedded in-process dispatcher. Errors from the broker, the
database or the object store (:class:`ServiceUnavailable`) propagate to the caller, which retries the
delivery (Celery's own retry); every other error fails the job with its message.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from scheduler.errors import JobCancelled, ServiceUnavailable
from scheduler.jobs import JobRecord
from scheduler.runtime import Runtime

log = logging.getLogger(__name__)
progress_hooks: list = []  # called as hook(context, done) on every report; worker.metrics adds one


def default_worker_name() -> str:
    return f"inline@{socket.gethostname()}:{os.getpid()}"


class JobContext:
    """What a runner may touch: its own keys in the store, throttled progress, and cancellation."""

    def __init__(self, runtime: Runtime, job: JobRecord, *, shard: int | None = None, interval: float = 1.0) -> None:
        self.runtime = runtime
        self.job = job
        self.shard = shard
        self.interval = interval
        self._last_report = 0.0
        self._last_check = 0.0

    @property
    def store(self):
        return self.runtime.store

    @property
    def table(self):
        return self.runtime.table

    def key(self, name: str) -> str:
        return self.runtime.job_key(self.job.id, name)

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        key = self.key(name)
        self.store.put_bytes(key, data, content_type)
        return key

    def report(self, done: int, *, total: int | None = None, info: dict | None = None, force: bool = False) -> None:
        for hook in progress_hooks:
            hook(self, done)
        now = time.monotonic()
        if not force and now - self._last_report < self.interval:
            return
        self._last_report = now
        if self.shard is None:
            self.table.progress(self.job.id, done, total=total, info=info)
        else:
            self.table.shard_progress(self.job.id, self.shard, done)

    def should_stop(self) -> bool:
        """Polled at step boundaries: a cancel was asked for or the job ended elsewhere."""
        now = time.monotonic()
        if now - self._last_check < self.interval:
            return False
        self._last_check = now
        return self.table.should_stop(self.job.id)

    def check_cancelled(self) -> None:
        if self.should_stop():
            raise JobCancelled(self.job.id)


def run_job(runtime: Runtime, job_id: str, worker: str | None = None) -> str:
    """Execute a train or evaluate job; returns the claim outcome ('ok' when it ran)."""
    table = runtime.table
    claim = table.claim(job_id, worker or default_worker_name())
    if claim != "ok":
        log.info("job %s not run: %s", job_id, claim)
        return claim
    job = table.get(job_id)
    spec = job.parsed_spec()
    context = JobContext(runtime, job)
    try:
        if spec.kind == "train":
            from . import train_job as runner
        else:
            from . import evaluate_job as runner
        metrics, artifacts = runner.run(context, spec)
    except JobCancelled:
        table.mark_cancelled(job_id)
        return "cancelled"
    except ServiceUnavailable:
        raise
    except Exception as exc:
        log.exception("job %s failed", job_id)
        table.fail(job_id, _describe(exc))
        return "failed"
    table.succeed(job_id, metrics=metrics, artifacts=artifacts)
    return "ok"


def run_shard(runtime: Runtime, job_id: str, index: int, worker: str | None = None) -> str:
    """Execute one shard of a generate job; the shard that completes the set finalises the job."""
    from . import generate_job

    table = runtime.table
    claim = table.claim_shard(job_id, index, worker or default_worker_name())
    if claim != "ok":
        log.info("job %s shard %d not run: %s", job_id, index, claim)
        return claim
    job = table.get(job_id)
    spec = job.parsed_spec()
    context = JobContext(runtime, job, shard=index)
    try:
        generate_job.run_shard(context, spec, index)
        generate_job.finalize_if_complete(context, spec)
    except JobCancelled:
        table.fail_shard(job_id, index, "cancelled")
        table.mark_cancelled(job_id)
        return "cancelled"
    except ServiceUnavailable:
        raise
    except Exception as exc:
        log.exception("job %s shard %d failed", job_id, index)
        message = _describe(exc)
        table.fail_shard(job_id, index, message)
        table.fail(job_id, f"shard {index}: {message}")
        return "failed"
    return "ok"


def fail_after_retries(runtime: Runtime, job_id: str, exc: BaseException, shard: int | None = None) -> None:
    """The last delivery of a task hit an unavailable service: the job fails with that reason."""
    message = _describe(exc)
    if shard is not None:
        runtime.table.fail_shard(job_id, shard, message)
        message = f"shard {shard}: {message}"
    runtime.table.fail(job_id, message)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
