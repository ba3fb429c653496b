"""Celery task bodies: thin. Parse the message (a job id, maybe a shard index), run, record.

Transient failures (broker, database or object store unreachable, SQLAlchemy connection errors
included, at the claim too) are retried with Celery's own ``retry`` and bounded exponential back-off
(:func:`retry_countdown`: 5, 10, 20, 40, 60, 60, ... s) while less than ``transient_retry_budget``
seconds of wall time have passed since the delivery's first transient failure (carried by the retry
message as ``transient_since``, so time spent inside failing attempts counts too); then the job fails.
A retry of the same delivery re-claims without counting an attempt; each new delivery counts one, and
the attempt cap fails the job for good. Each task logs one line when it starts and one when it ends,
with its job id (and shard) and outcome, so that ``grep JOB_ID`` finds a job in a worker's log.

Every worker also runs the reconciler (:mod:`scheduler.reconcile`) on a thread started on
``worker_ready``; a pass runs only while this worker holds the table's reconciler lease.
"""
from __future__ import annotations

import logging
import threading
import time

from celery import Task
from celery.signals import worker_ready, worker_shutdown
from celery.utils.log import get_task_logger

from scheduler.errors import ServiceUnavailable
from scheduler.runtime import Runtime

from . import execute
from .celery_app import TASK_EVALUATE, TASK_GENERATE_SHARD, TASK_TRAIN, app

log = get_task_logger(__name__)
# outside a task (start-up, the reconciler): a logger of its own, since get_task_logger(__name__) made
# logging.getLogger(__name__) the task logger itself (its lines read ???[???])
startup_log = logging.getLogger("worker.lifecycle")
_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime.create(patient=True)
    return _runtime


@worker_ready.connect
def _preload_default_model(**_) -> None:
    """Load torch and the default generator once at start-up, not inside the first task."""
    from . import models

    try:
        models.load(runtime(), "default", "generator")
    except Exception as exc:  # a worker without the default model still serves other models
        startup_log.warning("default model not preloaded: %s", exc)


_reconcile_stop = threading.Event()


@worker_ready.connect
def _start_reconciler(sender=None, **_) -> None:
    """The reconciliation duty: a daemon thread; one worker at a time holds the table's lease for it."""
    name = getattr(sender, "hostname", None) or execute.default_worker_name()
    threading.Thread(target=_reconcile_loop, args=(name,), name="reconciler", daemon=True).start()


@worker_shutdown.connect
def _stop_reconciler(**_) -> None:
    _reconcile_stop.set()


def _reconcile_loop(owner: str) -> None:
    from scheduler.dispatch import CeleryDispatcher
    from scheduler.reconcile import Reconciler

    rt = runtime()
    reconciler = Reconciler(rt, send=CeleryDispatcher(rt).send, finalize=_finalize, owner=owner)
    while not _reconcile_stop.wait(rt.settings.reconcile_interval):
        try:
            if reconciler.hold_duty():
                reconciler.run_once()
        except Exception as exc:  # a service is down: try again next interval
            startup_log.warning("reconcile pass failed: %s", exc)


def _finalize(job) -> None:
    from . import generate_job
    from .context import JobContext

    generate_job.finalize_if_complete(JobContext(runtime(), job), job.parsed_spec())


def retry_countdown(retries: int) -> int:
    """Back-off before retry number ``retries + 1``: 5, 10, 20, 40, then 60 s each."""
    return min(5 * 2**retries, 60)


def _worker_name(task: Task) -> str:
    return task.request.hostname or execute.default_worker_name()


def _run(task: Task, job_id: str, shard: int | None = None, transient_since: float | None = None) -> str:
    # "<id>:<retries>": the task's own retries continue its attempt; a redelivery (same id, same
    # retries: its worker died) is a new attempt (scheduler.jobs.continues)
    token = f"{task.request.id}:{task.request.retries}"
    what = f"job {job_id}" + (f" shard {shard}" if shard is not None else "")
    log.info("%s: started (%s, task %s)", what, task.name, token)
    started = time.monotonic()
    try:
        if shard is None:
            outcome = execute.run_job(runtime(), job_id, _worker_name(task), token)
        else:
            outcome = execute.run_shard(runtime(), job_id, shard, _worker_name(task), token)
    except ServiceUnavailable as exc:
        retries = task.request.retries
        since = transient_since or time.time()
        spent, countdown = time.time() - since, retry_countdown(retries)
        budget = runtime().settings.transient_retry_budget
        if spent + countdown > budget:
            try:
                execute.fail_after_retries(runtime(), job_id, exc, shard)
            except Exception as again:  # still down: the lease runs out and the reconciler takes over
                log.error("%s: could not record the failure: %s", what, again)
            log.warning("%s: failed: %s (still failing after %.0f s: CGAN_TRANSIENT_RETRY_BUDGET is %g s)", what, exc, spent, budget)
            return "failed"
        log.warning("%s: %s; retry %d in %d s (%.0f of %g s spent)", what, exc, retries + 1, countdown, spent, budget)
        raise task.retry(exc=exc, countdown=countdown, kwargs={"transient_since": since}) from exc
    log.info("%s: %s in %.1f s", what, outcome, time.monotonic() - started)
    return outcome


@app.task(name=TASK_TRAIN, bind=True, max_retries=None)
def train(self: Task, job_id: str, transient_since: float | None = None) -> str:
    return _run(self, job_id, transient_since=transient_since)


@app.task(name=TASK_EVALUATE, bind=True, max_retries=None)
def evaluate(self: Task, job_id: str, transient_since: float | None = None) -> str:
    return _run(self, job_id, transient_since=transient_since)


@app.task(name=TASK_GENERATE_SHARD, bind=True, max_retries=None)
def generate_shard(self: Task, job_id: str, index: int, transient_since: float | None = None) -> str:
    return _run(self, job_id, index, transient_since)
