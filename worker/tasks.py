"""Celery task bodies: thin. Parse the message (a job id, maybe a shard index), run, record.

Transient failures (broker, database or object store unreachable) are retried with Celery's own
``retry`` and exponential back-off; each delivery is one attempt in the job table, whose cap fails
the job for good.
"""
from __future__ import annotations

from celery import Task
from celery.signals import worker_ready
from celery.utils.log import get_task_logger

from scheduler.errors import ServiceUnavailable
from scheduler.runtime import Runtime

from . import execute
from .celery_app import TASK_EVALUATE, TASK_GENERATE_SHARD, TASK_TRAIN, app

log = get_task_logger(__name__)
_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime.create()
    return _runtime


@worker_ready.connect
def _preload_default_model(**_) -> None:
    """Load torch and the default generator once at start-up, not inside the first task."""
    from . import models

    try:
        models.load(runtime(), "default", "generator")
    except Exception as exc:  # a worker without the default model still serves other models
        log.warning("default model not preloaded: %s", exc)


def _worker_name(task: Task) -> str:
    return task.request.hostname or execute.default_worker_name()


def _run(task: Task, job_id: str, shard: int | None = None) -> str:
    try:
        if shard is None:
            return execute.run_job(runtime(), job_id, _worker_name(task))
        return execute.run_shard(runtime(), job_id, shard, _worker_name(task))
    except ServiceUnavailable as exc:
        if task.request.retries >= runtime().settings.max_attempts - 1:
            execute.fail_after_retries(runtime(), job_id, exc, shard)
            return "failed"
        log.warning("job %s: %s; retrying", job_id, exc)
        raise task.retry(exc=exc, countdown=min(2 ** task.request.retries * 5, 300)) from exc


@app.task(name=TASK_TRAIN, bind=True, max_retries=None)
def train(self: Task, job_id: str) -> str:
    return _run(self, job_id)


@app.task(name=TASK_EVALUATE, bind=True, max_retries=None)
def evaluate(self: Task, job_id: str) -> str:
    return _run(self, job_id)


@app.task(name=TASK_GENERATE_SHARD, bind=True, max_retries=None)
def generate_shard(self: Task, job_id: str, index: int) -> str:
    return _run(self, job_id, index)
