"""Cleanup of a generate job that ended without succeeding (cancelled or failed).

Every shard row becomes final (``cancelled`` or ``failed``) and the job's partial shard objects under
``jobs/<id>/shards/`` are deleted. A shard still running under a live lease is left to its worker,
which stops at its next check and calls this again; the reconciler repeats it for any job left
half-cleaned (a worker that died meanwhile). ``cganctl jobs purge JOB`` runs it by hand and also
removes every other object of a finished, unsuccessful job.
"""
from __future__ import annotations

import logging

from .errors import CganError
from .records import JobRecord
from .runtime import Runtime
from .specs import JobStatus, ShardStatus

log = logging.getLogger(__name__)


def close_unsuccessful(runtime: Runtime, job: JobRecord) -> int:
    """Make the shard rows of an ended, unsuccessful generate job final and delete its shard objects.

    Returns the number of objects deleted (0 while a shard still runs under a live lease).
    """
    if job.kind != "generate" or job.status not in (JobStatus.failed.value, JobStatus.cancelled.value):
        return 0
    table = runtime.table
    if job.status == JobStatus.cancelled.value:
        table.end_open_shards(job.id, ShardStatus.cancelled, "job cancelled")
    else:
        table.end_open_shards(job.id, ShardStatus.failed, f"job failed: {(job.error or '')[:200]}")
    if any(s.status == ShardStatus.running.value for s in table.shards(job.id)):
        return 0  # its worker stops at the next check and cleans up then
    try:
        deleted = runtime.store.delete_prefix(runtime.job_key(job.id, "shards/"))
    except CganError as exc:  # the store is down or refuses (the job may have failed for that very reason)
        log.warning("job %s: partial shard objects not deleted (%s); `cganctl jobs purge %s` deletes them once the store answers", job.id, exc, job.id)
        return 0
    if deleted:
        log.info("job %s: deleted %d partial shard objects", job.id, deleted)
    return deleted


def purge(runtime: Runtime, job: JobRecord) -> int:
    """Remove every object of a finished job that did not succeed (shards, partial manifest, checkpoints)."""
    close_unsuccessful(runtime, job)
    return runtime.store.delete_prefix(runtime.job_key(job.id, ""))
