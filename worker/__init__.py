"""cganctl workers: the Celery app (``worker.celery_app``), thin task bodies (``worker.tasks``) and the job
runners they call (``worker.execute`` and one module per job kind)."""
