"""The Celery app, configured for long GPU tasks. Importing it is light (no torch): the CLI sends with it.

- JSON only, never pickle: a message carries a job id (and a shard index); the spec lives in the table.
- Late acks + reject on worker loss: a task whose worker dies is delivered again; the attempt cap is
  kept in the job table (``jobs.attempts`` / ``max_attempts``), not in the message.
- Prefetch 1; a Redis visibility timeout longer than the longest task (a task still unacknowledged
  past it is delivered again); long tasks are cancelled when the broker connection is lost.
- Soft time limit before the hard one, so a task can record its state.
- Routing by job kind (``task_routes``); a job's ``--queue`` overrides it per message.
- GPU workers run ``--pool solo`` (CUDA cannot be initialised in a forked child): one process per GPU.
- Task events on (sent and worker events), so ``celery -A worker.celery_app flower`` shows every task.
"""
from __future__ import annotations

from celery import Celery

from scheduler.settings import Settings, get_settings
from scheduler.taskmessages import (  # noqa: F401  (re-exported: worker.tasks names its tasks with them)
    PRIORITY_LEVELS,
    QUEUE_KEY_SEP,
    TASK_EVALUATE,
    TASK_FOR_KIND,
    TASK_GENERATE_SHARD,
    TASK_TRAIN,
    broker_priority,
)


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # fixups=[]: no Django fixup (Celery's default one imports celery.worker: ~0.1 s on every submit)
    app = Celery("cganctl", broker=settings.broker_url or "memory://", include=["worker.tasks"], fixups=[])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "queue_order_strategy": "priority",
            "sep": QUEUE_KEY_SEP,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_default_queue=settings.default_queue,
        task_create_missing_queues=True,
        task_routes={name: {"queue": settings.queue_for(kind)} for kind, name in TASK_FOR_KIND.items()},
        worker_send_task_events=True,  # task events for `celery flower` / `celery events`
        task_send_sent_event=True,
        event_queue_expires=60,  # an event queue nobody reads (no Flower running) goes away
        event_queue_ttl=5,
    )
    return app


app = make_app()


def _scrub_worker_logs(logger=None, **_kwargs) -> None:
    """Worker logs never show a secret of the settings (URL passwords, S3 keys), tracebacks included."""
    from scheduler.redact import install_log_scrubbing

    install_log_scrubbing(logger)


from celery.signals import after_setup_logger, after_setup_task_logger  # noqa: E402

after_setup_logger.connect(_scrub_worker_logs, weak=False)
after_setup_task_logger.connect(_scrub_worker_logs, weak=False)
