"""What a job runner may touch: its own keys in the store, throttled progress, and cancellation.

Shared by the three runners (``train_job``, ``evaluate_job``, ``generate_job``) and created by
``worker.execute``, which claims a task, calls a runner with a :class:`JobContext` and records the outcome.
"""
from __future__ import annotations

import time

from scheduler.errors import JobCancelled
from scheduler.jobs import JobRecord
from scheduler.runtime import Runtime

progress_hooks: list = []  # called as hook(context, done) on every report; worker.metrics adds one


class JobContext:
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
