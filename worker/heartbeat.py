"""The lease heartbeat: a background thread that keeps a running task's lease in the job table alive.

A running job (or shard) row carries ``lease_owner`` (the delivery) and ``lease_expires_at``. While the
task runs, this thread pushes the expiry ``lease_timeout`` seconds ahead every ``heartbeat_interval``
seconds, whatever the task itself is doing (a long batch, a retry loop, a stuck upload). When the
process dies the renewals stop, the lease runs out, and the reconciler runs the work again elsewhere:
a worker's death is noticed within ``lease_timeout`` (+ one reconcile interval), not the broker's
visibility timeout. A renewal that fails because the database is down is logged and tried again; one
that finds the lease taken by someone else sets :attr:`lost`, and the task stops at its next check.
"""
from __future__ import annotations

import logging
import threading

from scheduler.jobs import JobTable

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, table: JobTable, job_id: str, token: str, interval: float, shard: int | None = None) -> None:
        self.table = table
        self.job_id = job_id
        self.token = token
        self.shard = shard
        self.interval = interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
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
