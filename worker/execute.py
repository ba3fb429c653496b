"""Running one task of a job: claim it in the table, call the job kind's runner, record the outcome.

Shared by the Celery tasks and by the embedded in-process dispatcher. While the runner works, a
:class:`~worker.heartbeat.Heartbeat` thread renews the task's lease in the table. Errors from the
broker, the database (``OperationalError`` and other connection errors, turned into
:class:`ServiceUnavailable`) or the object store propagate to the caller, which retries the delivery
(Celery's own retry, with back-off); every other error fails the job with its message.
"""
from __future__ import annotations

import logging
import sys
import uuid

from scheduler import cleanup
from scheduler.errors import CganError, JobCancelled
from scheduler.runtime import Runtime
from scheduler.specs import ShardStatus

from . import evaluate_job, generate_job, train_job
from .context import JobContext, as_unavailable, transient
from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another delivery took over this task's lease: stop without recording anything."""


def default_worker_name() -> str:
    from scheduler.reconcile import inline_worker_name

    return inline_worker_name()


def run_job(runtime: Runtime, job_id: str, worker: str | None = None, token: str | None = None) -> str:
    """Execute a train or evaluate job; returns the claim outcome ('ok' when it ran)."""
    try:
        return _run_job(runtime, job_id, worker or default_worker_name(), token or uuid.uuid4().hex)
    except Exception as exc:
        if transient(exc):
            raise as_unavailable(exc) from exc
        raise


def run_shard(runtime: Runtime, job_id: str, index: int, worker: str | None = None, token: str | None = None) -> str:
    """Execute one shard of a generate job; the shard that completes the set finalises the job."""
    try:
        return _run_shard(runtime, job_id, index, worker or default_worker_name(), token or uuid.uuid4().hex)
    except Exception as exc:
        if transient(exc):
            raise as_unavailable(exc) from exc
        raise


def stopping_cold() -> bool:
    """True inside a Celery worker in a cold shutdown (a second Ctrl-C, SIGQUIT). Under ``--pool solo`` the task
    runs on the main thread, so Celery's shutdown handler raises into the task (``NotImplementedError``: the solo
    pool cannot kill a job): that is the worker going away, not the job failing. Such a task records nothing and
    leaves its work running; its lease runs out and another worker takes it back, as after a SIGKILL."""
    state = sys.modules.get("celery.worker.state")  # imported only in a Celery worker
    return bool(state is not None and getattr(state, "should_terminate", None))


def _run_job(runtime: Runtime, job_id: str, worker: str, token: str) -> str:
    table = runtime.table
    claim = table.claim(job_id, worker, token)
    if claim != "ok":
        log.info("job %s not run: %s", job_id, claim.value)
        return claim.value
    job = table.get(job_id)
    spec = job.parsed_spec()
    runner = train_job if spec.kind == "train" else evaluate_job
    with Heartbeat(table, job_id, token, runtime.settings.heartbeat_interval, limit=runtime.settings.task_time_limit) as heartbeat:
        context = JobContext(runtime, job, heartbeat=heartbeat)
        try:
            metrics, artifacts = runner.run(context, spec)
        except JobCancelled:
            if heartbeat.lost:
                log.warning("job %s: this delivery lost its lease; the job is another delivery's", job_id)
                return "lease lost"
            table.mark_cancelled(job_id)
            return "cancelled"
        except Exception as exc:
            if heartbeat.lost:
                log.warning("job %s: this delivery lost its lease (%s: %s); the job is another delivery's", job_id, type(exc).__name__, exc)
                return "lease lost"
            if stopping_cold():
                log.warning("job %s: the worker is stopping (cold shutdown; %s); the job is left to its lease, for another worker to take back", job_id, type(exc).__name__)
                return "worker stopping"
            if transient(exc):
                raise
            _log_failure(exc, "job %s failed", job_id)
            table.fail(job_id, _describe(exc))
            return "failed"
        if not table.succeed(job_id, metrics=metrics, artifacts=artifacts, token=token) and heartbeat.lost:
            return "lease lost"
    return "ok"


def _run_shard(runtime: Runtime, job_id: str, index: int, worker: str, token: str) -> str:
    table = runtime.table
    claim = table.claim_shard(job_id, index, worker, token)
    if claim != "ok":
        log.info("job %s shard %d not run: %s", job_id, index, claim.value)
        if claim in ("cancelled", "exhausted"):
            cleanup.close_unsuccessful(runtime, table.get(job_id))
        return claim.value
    job = table.get(job_id)
    spec = job.parsed_spec()
    with Heartbeat(table, job_id, token, runtime.settings.heartbeat_interval, shard=index, limit=runtime.settings.task_time_limit) as heartbeat:
        context = JobContext(runtime, job, shard=index, heartbeat=heartbeat)
        try:
            generate_job.make_shard(context, spec, index)
            if not generate_job.finalize_if_complete(context, spec):
                ended = table.get(job_id)
                if ended.finished and ended.status != "succeeded":  # it ended while this shard ran
                    cleanup.close_unsuccessful(runtime, ended)
        except JobCancelled:
            if heartbeat.lost:
                log.warning("job %s shard %d: this delivery lost its lease; the shard is another delivery's", job_id, index)
                return "lease lost"
            ended = table.get(job_id)
            table.fail_shard(job_id, index, "cancelled" if not ended.finished or ended.status == "cancelled" else f"stopped: job {ended.status}", ShardStatus.cancelled)
            if not ended.finished:
                table.mark_cancelled(job_id)
            cleanup.close_unsuccessful(runtime, table.get(job_id))
            return "cancelled"
        except Exception as exc:
            if heartbeat.lost:
                log.warning("job %s shard %d: this delivery lost its lease (%s: %s); the shard is another delivery's", job_id, index, type(exc).__name__, exc)
                return "lease lost"
            if stopping_cold():
                log.warning("job %s shard %d: the worker is stopping (cold shutdown; %s); the shard is left to its lease, for another worker to take back", job_id, index, type(exc).__name__)
                return "worker stopping"
            if transient(exc):
                raise
            _log_failure(exc, "job %s shard %d failed", job_id, index)
            message = _describe(exc)
            table.fail_shard(job_id, index, message)
            table.fail(job_id, f"shard {index}: {message}")
            cleanup.close_unsuccessful(runtime, table.get(job_id))
            return "failed"
    return "ok"


def fail_after_retries(runtime: Runtime, job_id: str, exc: BaseException, shard: int | None = None) -> None:
    """The last delivery of a task hit an unavailable service: the job fails with that reason."""
    message = _describe(exc)
    if shard is not None:
        runtime.table.fail_shard(job_id, shard, message)
        message = f"shard {shard}: {message}"
    runtime.table.fail(job_id, message)
    cleanup.close_unsuccessful(runtime, runtime.table.get(job_id))


def _log_failure(exc: BaseException, message: str, *args) -> None:
    """A failure the product explains (a refusal, bad data, a --min-confidence never reached) is one line;
    anything else keeps its traceback."""
    if isinstance(exc, _explained()):
        log.error(message + ": %s", *args, _describe(exc))
    else:
        log.exception(message, *args)


def _explained() -> tuple[type[BaseException], ...]:
    """The failures the product words itself (bad data, a budget, a diverged run, an unreadable checkpoint, a
    --min-confidence never reached): their message is the whole story, without a class name or traceback."""
    from cganmodel.dataset_index import DataError
    from cganmodel.limits import BudgetExceeded
    from cganmodel.training import TrainingDiverged

    explained: tuple[type[BaseException], ...] = (CganError, DataError, BudgetExceeded, TrainingDiverged)
    try:
        from cganmodel.checkpoint import CheckpointError
        from cganmodel.sampling import GenerationError

        explained += (CheckpointError, GenerationError)
    except Exception:  # a broken torch install: still record the failure
        pass
    return explained


def _describe(exc: BaseException) -> str:
    """The job's error line: the product's own message as it is; anything else with its class name."""
    from scheduler.redact import scrub

    text = scrub(str(exc).strip())
    if text and isinstance(exc, _explained()):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
