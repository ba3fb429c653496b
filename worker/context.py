"""What a job runner may touch: its own keys in the store, throttled progress, and cancellation.

Shared by the three runners (``train_job``, ``evaluate_job``, ``generate_job``) and created by
``worker.execute``, which claims a task, calls a runner with a :class:`JobContext` and records the outcome.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from scheduler.errors import JobCancelled
from scheduler.jobs import JobRecord
from scheduler.runtime import Runtime

log = logging.getLogger(__name__)


def transient(exc: BaseException) -> bool:
    """An error that a later delivery may not hit: a service that did not answer."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from scheduler.errors import ServiceUnavailable

    if isinstance(exc, ServiceUnavailable | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def as_unavailable(exc: BaseException):
    """A :func:`transient` error as ServiceUnavailable, with one line of what the database said."""
    from scheduler.errors import ServiceUnavailable

    if isinstance(exc, ServiceUnavailable):
        return exc
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return ServiceUnavailable(f"database unavailable: {type(exc).__name__}: {text[0] if text else ''}")

progress_hooks: list = []  # called as hook(context, done) on every report; worker.metrics adds one
retry_hooks: list = []  # called as hook(context) on every upload try that met an unavailable store; worker.metrics adds one


class TaskDeadlineExceeded(Exception):
    """A task ran past ``task_soft_time_limit``: its job fails with this message."""


class JobContext:
    def __init__(
        self, runtime: Runtime, job: JobRecord, *, shard: int | None = None, interval: float = 1.0, heartbeat=None
    ) -> None:
        self.runtime = runtime
        self.heartbeat = heartbeat  # worker.heartbeat.Heartbeat: .lost once another delivery took the lease
        self.started = time.monotonic()
        self.deadline = self.started + runtime.settings.task_soft_time_limit
        self.job = job
        self.shard = shard
        self.interval = interval
        self._last_report = 0.0
        self._last_check = 0.0
        self._table_down_since: float | None = None  # progress and cancel checks carry on through a table outage
        self._table_down_said: float | None = None
        self._datasets: dict[tuple[str, str], Any] = {}  # kept by load_dataset(keep=True) for the task's next call

    @property
    def lease_lost(self) -> bool:
        """This delivery no longer holds the work's lease: it must stop without writing."""
        return self.heartbeat is not None and self.heartbeat.lost

    @property
    def token(self) -> str | None:
        """The delivery's lease token: conditional writes of the result carry it."""
        return self.heartbeat.token if self.heartbeat is not None else None

    @property
    def store(self):
        return self.runtime.store

    @property
    def table(self):
        return self.runtime.table

    def dataset_path(self, source: str) -> str:
        """A spec's dataset/reference as this worker reads it: ``cifar10``, a path under its roots, or its
        local copy of a store object (``scheduler.dataset_access.check_on_worker``; raises DatasetRefused)."""
        from scheduler.dataset_access import check_on_worker

        return check_on_worker(source, self.runtime.settings, self.store)

    def load_dataset(self, source: str, split: str = "train", keep: bool = False):
        """``source``'s ``split`` in memory, under this worker's dataset rules and reading budgets. ``keep``: hold it
        for this task's next call of the same split (evaluate --downstream reads the reference's train split twice),
        which takes it back, so nothing is held longer than it is used."""
        from cganmodel.data import load_image_dataset

        data = self._datasets.pop((source, split), None)
        if data is None:
            settings = self.runtime.settings
            data = load_image_dataset(self.dataset_path(source), split=split, root=str(settings.data_dir / "datasets"), limits=settings.dataset_limits())
        if keep:
            self._datasets[source, split] = data
        return data

    def key(self, name: str) -> str:
        return self.runtime.job_key(self.job.id, name)

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        key = self.key(name)
        self.put_retrying(key, data, content_type)
        return key

    def report(self, done: int, *, total: int | None = None, info: dict | None = None, force: bool = False) -> None:
        for hook in progress_hooks:
            hook(self, done)
        now = time.monotonic()
        if not force and now - self._last_report < self.interval:
            return
        self._last_report = now
        try:
            if self.shard is None:
                self.table.progress(self.job.id, done, total=total, info=info)
            else:
                self.table.shard_progress(self.job.id, self.shard, done)
            self._table_back()
        except Exception as exc:  # progress is advisory: the work goes on, the next report says where it is
            if not transient(exc):
                raise
            self._table_down(exc, "progress not recorded")

    def should_stop(self) -> bool:
        """Polled at step boundaries: a cancel was asked for, the job ended elsewhere or the lease was lost. While
        the job table does not answer, the work goes on (a cancel is read once it answers again; a lease taken
        back meanwhile is found by the heartbeat, and this delivery then stops and writes nothing)."""
        now = time.monotonic()
        if self.lease_lost or now > self.deadline:
            return True
        if now - self._last_check < self.interval:
            return False
        self._last_check = now
        try:
            stop = self.table.should_stop(self.job.id)
        except Exception as exc:
            if not transient(exc):
                raise
            self._table_down(exc, "cancel not checked")
            return False
        self._table_back()
        return stop

    def _table_down(self, exc: Exception, what: str) -> None:
        now = time.monotonic()
        if self._table_down_since is None:
            self._table_down_since = now
        if self._table_down_said is None or now - self._table_down_said >= 60:  # the first failure, then once a minute
            self._table_down_said = now
            log.warning("job %s: %s (%s); the work goes on", self.job.id, what, as_unavailable(exc))

    def _table_back(self) -> None:
        if self._table_down_since is not None:
            log.warning("job %s: the job table answers again after %.0f s", self.job.id, time.monotonic() - self._table_down_since)
            self._table_down_since = None
            self._table_down_said = None

    def check_cancelled(self) -> None:
        """Raise ``JobCancelled`` on a cancel; ``TaskDeadlineExceeded`` past ``task_soft_time_limit``.

        Runs in the task's own thread between batches, so it works under ``--pool solo`` too, where
        Celery's time limits are not enforced. A delivery that lost its lease (taken back while it hung)
        stops first, whatever else holds: another delivery owns the work, so this one writes nothing.
        """
        if self.lease_lost:
            raise JobCancelled(self.job.id)
        if time.monotonic() > self.deadline:
            raise TaskDeadlineExceeded(
                f"the task ran past its deadline of {self.runtime.settings.task_soft_time_limit} s (CGAN_TASK_SOFT_TIME_LIMIT)"
            )
        if self.should_stop():
            raise JobCancelled(self.job.id)

    def raise_stopped(self) -> None:
        """A runner stopped at a boundary: raise why (deadline, else a cancel or a lost lease)."""
        self._last_check = 0.0
        self.check_cancelled()
        raise JobCancelled(self.job.id)

    def put_retrying(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Upload bytes already made, retrying an unavailable store with back-off (never regenerating them).

        Retries for up to ``transient_retry_budget`` seconds, checking cancellation and the deadline
        between tries, with a warning in the worker's log at the first failure and once a minute; then
        ``RetryBudgetSpent``: the job fails (a Celery retry would make the bytes again and spend a second
        budget). A refusal (``ServiceRefused``: credentials, no bucket) is not retried at all.
        """
        from scheduler.errors import RetryBudgetSpent, ServiceUnavailable

        budget = self.runtime.settings.transient_retry_budget
        started = time.monotonic()
        delay = 1.0
        warned: float | None = None
        while True:
            try:
                self.store.put_bytes(key, data, content_type)
                if warned is not None:
                    log.warning("job %s: the upload of %s went through after %.0f s of retries", self.job.id, key, time.monotonic() - started)
                return
            except ServiceUnavailable as exc:
                for hook in retry_hooks:
                    hook(self)
                spent = time.monotonic() - started
                if spent + delay > budget:
                    raise RetryBudgetSpent(f"{exc} (still failing after {spent:.0f} s of retries: CGAN_TRANSIENT_RETRY_BUDGET is {budget:g} s)") from exc
                if warned is None or time.monotonic() - warned >= 60:  # the first failure, then once a minute
                    log.warning("job %s: %s; retrying the upload (%.0f of %g s spent)", self.job.id, exc, spent, budget)
                    warned = time.monotonic()
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
            self._last_check = 0.0
            self.check_cancelled()
