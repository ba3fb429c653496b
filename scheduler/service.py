"""The scheduler API: what the CLI calls and what tests call directly.

``submit`` is all-or-nothing: it checks the broker (embedded: the object store the job will write),
writes the job row (and its shard rows) in one transaction, enqueues the tasks, and deletes the row again if enqueueing fails,
so there is never a row without a task. A task whose row is gone is dropped by the worker.
"""
from __future__ import annotations

import builtins
import time
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterator

from . import submission
from .dispatch import Dispatcher, make_dispatcher
from .errors import InvalidInput
from .records import JobRecord, status_phrase
from .runtime import Runtime
from .specs import GenerateSpec, JobSpec, JobStatus, TrainSpec

if TYPE_CHECKING:
    from .lean import LeanSubmit

UNIT = {"train": "steps", "evaluate": "images", "generate": "images"}
QUEUED_HINT_S = 5.0  # a followed job still queued this long on a fleet: is any live worker consuming its queue?


class Service:
    def __init__(self, runtime: Runtime | None = None) -> None:
        self.runtime = runtime or Runtime.create()
        self._dispatcher: Dispatcher | None = None

    @property
    def table(self):
        return self.runtime.table

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = make_dispatcher(self.runtime)
        return self._dispatcher

    @cached_property
    def lean(self) -> LeanSubmit | None:
        """The submit hot path (``scheduler.lean``) where it applies: PostgreSQL + Redis; else None."""
        from . import lean

        return lean.LeanSubmit(self.runtime.settings) if lean.applies(self.runtime.settings) else None

    # --- specs ------------------------------------------------------------------------------------
    def spec_for(self, request: submission.Request) -> JobSpec:
        """The resolved spec of a typed request (raises InvalidInput naming the flag)."""
        models = self.lean.models if self.lean else self.runtime.models
        return submission.resolve(request, models, self.runtime.settings)

    # --- jobs -------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, *, queue: str | None = None, priority: int = 0, retry_of: str | None = None) -> JobRecord:
        settings = self.runtime.settings
        queue = settings.queue_for(spec.kind) if queue is None else queue  # --queue '' is refused below, not the default
        submission.check_queue_priority(queue, priority)
        table, dispatcher = (self.lean.table, self.lean.dispatcher) if self.lean else (self.table, self.dispatcher)
        dispatcher.check()
        if settings.embedded:  # the job writes the store from this process; workers check and retry it themselves
            self.runtime.store.check()
            _check_local_device(spec)
        if isinstance(spec, GenerateSpec):
            shard_counts = [end - start for start, end in map(spec.shard_range, range(spec.num_shards))]
            total: int | None = spec.total
        else:
            shard_counts = []
            total = spec.steps if isinstance(spec, TrainSpec) else None
        job = table.create(
            spec,
            queue=queue,
            priority=priority,
            max_attempts=settings.max_attempts,
            progress_total=total,
            progress_unit=UNIT[spec.kind],
            shard_counts=shard_counts,
            retry_of=retry_of,
        )
        try:
            dispatcher.enqueue(job, len(shard_counts))
        except Exception:
            table.delete(job.id)
            raise
        return job

    def get(self, job_id: str) -> JobRecord:
        return self.table.get(job_id)

    def list(self, **filters) -> list[JobRecord]:
        return self.table.list(**filters)

    def sweep(self) -> "builtins.list[str]":
        """On the embedded default, fail jobs whose process died (``reconcile.embedded_pass``).

        With a broker the workers reconcile; then this does nothing.
        """
        if not self.runtime.settings.embedded:
            return []
        from .reconcile import embedded_pass

        return embedded_pass(self.runtime)

    def cancel(self, job_id: str) -> str:
        """Cancel: at once when nothing runs it (queued, or its worker is gone), else at its next check."""
        from . import cleanup

        job_id = self.get(job_id).id
        outcome = self.table.request_cancel(job_id)
        if outcome == "cancelling" and not self.table.live_leases(job_id):
            self.table.mark_cancelled(job_id)
            outcome = JobStatus.cancelled.value
        if outcome == JobStatus.cancelled.value:
            cleanup.close_unsuccessful(self.runtime, self.table.get(job_id))
        return outcome

    def retry(self, job_id: str, *, queue: str | None = None, priority: int | None = None) -> JobRecord:
        """Resubmit a job that did not succeed as a new job pointing at the old one.

        A job still active is first failed, unless a worker holds a live lease on it (then: refused).
        A train job's retry resumes from the old job's latest checkpoint.
        """
        from . import cleanup

        old = self.get(job_id)
        if old.status == JobStatus.succeeded.value:
            raise InvalidInput(f"job {old.id} succeeded: there is nothing to retry")
        pending = [(i, s) for i, s in self.table.retries_of(old.id) if s not in (JobStatus.failed.value, JobStatus.cancelled.value)]
        if pending:  # a second retry would run the same work twice
            again, status = pending[-1]
            raise InvalidInput(f"job {old.id} was already retried as {again} ({status}): watch that one (cganctl jobs watch {again[:12]})")
        if not old.finished:
            if self.table.live_leases(old.id):
                raise InvalidInput(f"job {old.id} {status_phrase(old.status)} and its worker is alive (lease renewed): cancel it first or wait for it")
            self.table.fail(old.id, "abandoned: retried while no worker was running it")
            cleanup.close_unsuccessful(self.runtime, self.table.get(old.id))
            old = self.get(old.id)
        spec = old.parsed_spec()
        if isinstance(spec, TrainSpec):
            spec = spec.model_copy(update={"resume_from": old.id})
        return self.submit(spec, queue=old.queue if queue is None else queue, priority=old.priority if priority is None else priority, retry_of=old.id)

    def follow(
        self, job_id: str, interval: float = 0.5, on_unserved: Callable[[str], None] | None = None
    ) -> Iterator[JobRecord]:
        """Yield the job's row each time it changes, until it has finished. On a fleet, a job still queued
        after ``QUEUED_HINT_S`` is checked once: ``on_unserved(queue)`` when no live worker consumes its queue."""
        last = None
        swept = started = time.monotonic()
        hinted = on_unserved is None or self.runtime.settings.embedded
        while True:
            if time.monotonic() - swept > 2:
                swept = time.monotonic()
                self.sweep()
            job = self.get(job_id)
            if not hinted and job.status == JobStatus.queued and time.monotonic() - started > QUEUED_HINT_S:
                hinted = True
                if on_unserved is not None and not self.queue_served(job.queue):
                    on_unserved(job.queue)
            if job.updated_at != last or job.finished:
                last = job.updated_at
                yield job
            if job.finished:
                return
            time.sleep(interval)

    def queue_served(self, queue: str) -> bool:
        """Does a live worker consume ``queue`` (``health.unserved_queues``)? True whenever that is unsure (a busy
        worker did not answer and might consume it) or asking fails: no false alarm."""
        from .health import live_workers, silent_workers, unserved_queues

        try:
            workers = live_workers(self.runtime.settings)
            return queue not in unserved_queues(self.runtime, workers) or bool(silent_workers(self.runtime, workers))
        except Exception:
            return True

    def wait(
        self, job_id: str, on_update: Callable[[JobRecord], None] | None = None, on_unserved: Callable[[str], None] | None = None
    ) -> JobRecord:
        job = None
        for job in self.follow(job_id, on_unserved=on_unserved):
            if on_update:
                on_update(job)
        assert job is not None
        return job

    def finish_local(self) -> None:
        """In embedded mode, let the in-process job thread end before the process does."""
        if self._dispatcher is not None:
            self._dispatcher.wait_local()


def _check_local_device(spec: JobSpec) -> None:
    """Embedded: the job runs in this process, so a device this machine lacks is bad input now (no row), not a
    job that fails a second later. (A fleet's workers have their own devices: they check it themselves.)"""
    device = str(spec.recipe.get("device", "auto")) if isinstance(spec, TrainSpec) else "auto"
    if device.startswith("cuda"):
        from cganmodel.devices import resolve_device

        try:
            resolve_device(device)
        except ValueError as exc:
            raise InvalidInput(f"--set device={device}: {exc} on this machine, which runs the job itself (embedded default)") from None
