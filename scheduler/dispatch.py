"""Getting a job's tasks to a worker: Celery over the broker, or a thread of this process (embedded)."""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Protocol

from .errors import ServiceUnavailable
from .records import JobRecord
from .redact import redact_url, scrub
from .runtime import Runtime

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def check(self) -> str: ...
    def enqueue(self, job: JobRecord, shard_count: int) -> None: ...
    def wait_local(self) -> None: ...


class CeleryDispatcher:
    """Sends one message per task: ``(job_id,)`` or ``(job_id, shard_index)``, JSON, nothing else."""

    def __init__(self, runtime: Runtime) -> None:
        from worker.celery_app import make_app

        self.runtime = runtime
        self.app = make_app(runtime.settings)

    def check(self) -> str:
        """The broker answers, within seconds: a PING with read and connect timeouts on Redis (kombu's
        connection bounds only the connect, so a Redis that accepts and never answers would hang
        `cganctl status` and the fleet page)."""
        broker_url = self.runtime.settings.broker_url or ""
        url = redact_url(broker_url)
        try:
            if broker_url.startswith(("redis://", "rediss://", "unix://")):
                import redis

                client = redis.Redis.from_url(broker_url, socket_connect_timeout=3, socket_timeout=5)
                try:
                    client.ping()
                finally:
                    client.close()
            else:
                with self.app.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=3)
        except Exception as exc:  # redis-py and kombu raise the transport's own errors
            raise ServiceUnavailable(f"broker {url} is unreachable: {scrub(str(exc))}") from exc
        return url

    def enqueue(self, job: JobRecord, shard_count: int) -> None:
        self.send(job, list(range(shard_count)) if job.kind == "generate" else None)

    def send(self, job: JobRecord, shards: list[int] | None) -> None:
        """Send the job's message, or one per listed shard (also the reconciler's re-send)."""
        from .taskmessages import TASK_FOR_KIND, broker_priority, task_args

        name = TASK_FOR_KIND[job.kind]
        argsets = task_args(job.id, shards)
        options = {"queue": job.queue, "priority": broker_priority(job.priority)}
        try:
            with self.app.producer_or_acquire() as producer:
                for args in argsets:
                    self.app.send_task(
                        name,
                        args=args,
                        producer=producer,
                        retry=True,
                        retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
                        **options,
                    )
        except Exception as exc:
            raise ServiceUnavailable(f"could not enqueue job {job.id} on {redact_url(self.runtime.settings.broker_url or '')}: {scrub(str(exc))}") from exc

    def wait_local(self) -> None:
        """Nothing runs here: workers elsewhere execute the job."""


class InlineDispatcher:
    """The embedded default: the job runs in a thread of this process while the CLI watches the table."""

    def __init__(self, runtime: Runtime) -> None:
        # the job is a worker's work: its S3 calls wait out an outage as a worker's do (store.S3_PATIENCE)
        self.runtime = dataclasses.replace(runtime, patient=True)
        self.threads: list[threading.Thread] = []

    def check(self) -> str:
        return "none: jobs run in-process"

    def enqueue(self, job: JobRecord, shard_count: int) -> None:
        import uuid

        from worker import execute
        from worker.heartbeat import Heartbeat

        def run() -> None:
            table = self.runtime.table
            try:
                if job.kind == "generate":
                    # the job's own lease says "this process is running it" between shards too
                    token = f"inline-{uuid.uuid4().hex}"
                    table.take_lease(job.id, token)
                    with Heartbeat(table, job.id, token, self.runtime.settings.heartbeat_interval):
                        for index in range(shard_count):
                            execute.run_shard(self.runtime, job.id, index)
                    table.release_lease(job.id, token)
                else:
                    execute.run_job(self.runtime, job.id)
            except Exception as exc:  # the job row already says why; make sure it is not left running
                log.exception("in-process job %s failed", job.id)
                table.fail(job.id, scrub(f"{type(exc).__name__}: {exc}"))

        thread = threading.Thread(target=run, name=f"job-{job.id[:8]}")
        thread.start()
        self.threads.append(thread)

    def wait_local(self) -> None:
        for thread in self.threads:
            thread.join()


def make_dispatcher(runtime: Runtime) -> Dispatcher:
    return InlineDispatcher(runtime) if runtime.settings.embedded else CeleryDispatcher(runtime)
