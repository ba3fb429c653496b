"""The lease heartbeat: a background thread that keeps a running task's lease in the job table alive.

A running job (or shard) row carries ``lease_owner`` (the delivery) and ``lease_expires_at``. While the
task runs, this thread pushes the expiry ``lease_timeout`` seconds ahead every ``heartbeat_interval``
seconds, whatever the task itself is doing (a long batch, a retry loop, a stuck upload). When the
process dies the renewals stop, the lease runs out, and the reconciler runs the work again elsewhere:
a worker's death is noticed within ``lease_timeout`` (+ one reconcile interval), not the broker's
visibility timeout. A renewal that fails because the database is down is logged and tried again; one
that finds the lease taken by someone else sets :attr:`lost`, and the task stops at its next check.

A task still running ``limit`` seconds after it started (``CGAN_TASK_TIME_LIMIT``) is hung: the soft
deadline, checked between batches, would have stopped a live one, and a ``--pool solo`` worker has no
hard kill. The renewals stop there, so the lease runs out and the reconciler takes the work back as for
a dead worker (sent again while attempts remain), and :attr:`lost` is set so that the task, should it
ever wake, stops instead of writing.
"""
from __future__ import annotations

import logging
import threading
import time

from scheduler.jobs import JobTable

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, table: JobTable, job_id: str, token: str, interval: float, shard: int | None = None, limit: float | None = None) -> None:
        self.table = table
        self.job_id = job_id
        self.token = token
        self.shard = shard
        self.interval = interval
        self.limit = limit
        self.started = time.monotonic()
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.limit is not None and time.monotonic() - self.started > self.limit:
                self.lost = True
                log.error(
                    "job %s (shard %s): still running %.0f s after it started, past the task time limit of %s s "
                    "(CGAN_TASK_TIME_LIMIT): the task is hung; its lease is no longer renewed and the work is taken back",
                    self.job_id, self.shard, time.monotonic() - self.started, self.limit,
                )
                return
            try:
                if not self.table.renew_lease(self.job_id, self.token, self.shard):
                    self.lost = True
                    log.warning("job %s (shard %s): lease no longer held by this delivery", self.job_id, self.shard)
                    return
            except Exception as exc:  # database down: keep trying; the lease may run out meanwhile
                log.warning("job %s: lease renewal failed: %s", self.job_id, exc)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
