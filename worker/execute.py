"""Running one task of a job: claim it in the table, call the job kind's runner, record the outcome.

Shared by the Celery tasks and by the embedded in-process dispatcher. Errors from the broker, the
database or the object store (:class:`ServiceUnavailable`) propagate to the caller, which retries the
delivery (Celery's own retry); every other error fails the job with its message.
"""
from __future__ import annotations

import logging
import os
import socket

from scheduler.errors import JobCancelled, ServiceUnavailable
from scheduler.runtime import Runtime

from . import evaluate_job, generate_job, train_job
from .context import JobContext

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"inline@{socket.gethostname()}:{os.getpid()}"


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
    runner = train_job if spec.kind == "train" else evaluate_job
    try:
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
    table = runtime.table
    claim = table.claim_shard(job_id, index, worker or default_worker_name())
    if claim != "ok":
        log.info("job %s shard %d not run: %s", job_id, index, claim)
        return claim
    job = table.get(job_id)
    spec = job.parsed_spec()
    context = JobContext(runtime, job, shard=index)
    try:
        generate_job.make_shard(context, spec, index)
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
    from scheduler.redact import scrub

    text = scrub(str(exc).strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
