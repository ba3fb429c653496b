"""Submit latency on the real services: how long `cganctl submit` takes, and how soon an idle worker starts the task.

    python -m bench.submit_latency --runs 20 --out runs/bench/submit-latency.json

Services: SeaweedFS, a fresh PostgreSQL database (migrated, dropped at the end) and a Redis database
(``--redis-db``, default 7, flushed before and after), as ``bench/services.py`` starts them.

1. Submit wall time, no worker: ``cganctl submit generate --label frog --count 10 --json`` started
   ``--runs`` times (after ``--warmup`` runs), each timed from process launch to exit
   (``time.perf_counter`` around ``subprocess.run``: interpreter start, imports, settings, the schema
   check, the job row, the Celery message). Median, min, max.
2. Submit -> first task started, one idle worker (``cganctl worker``, ready, nothing queued): the same
   submit ``--runs`` times, one at a time; for each job, the first shard row's ``started_at`` (written
   by the worker when it claims the task) minus the job row's ``created_at`` (written by the submit just
   before it sends the message). Both are the job table's timestamps from one machine's clock. The
   worker has finished the previous job before the next submit (it is idle). Also reported: from the
   submit process's launch (this script's clock) to that ``started_at``.

The submits run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` dropped), as an installed wheel
has its ``.pyc`` files; ``--no-bytecode`` keeps the variable.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.benchutil import finish_facts, fmt, machine_facts, print_facts, print_table, write_json
from harness.services import REDIS_DB, ROOT, cganctl_command, keep_or_remove, real_services, workers

SUBMIT = ["submit", "generate", "--label", "frog", "--count", "10", "--json"]


def _timed_submit(env: dict[str, str]) -> tuple[dict, float, dt.datetime]:
    """Run one submit; returns its JSON, its wall seconds and the wall-clock time it was launched."""
    launched = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    done = subprocess.run([*cganctl_command(), *SUBMIT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"submit exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout), wall, launched


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _table(env: dict[str, str]):
    """The job table, read in this process (polling with a `cganctl` process would compete for the CPU)."""
    from scheduler.db import get_engine
    from scheduler.jobs import JobTable
    from scheduler.settings import Settings

    return JobTable(get_engine(Settings(database_url=env["CGAN_DATABASE_URL"], data_dir=env["CGAN_DATA_DIR"])))


def _wait_finished(table, job_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = table.get(job_id)
        if job.finished:
            if job.status != "succeeded":
                raise RuntimeError(f"job {job_id} {job.status}: {job.error}")
            return job, table.shards(job_id)
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not finish in {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--redis-db", type=int, default=REDIS_DB)
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--no-bytecode", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if set (default: drop it, as an installed wheel has its bytecode)")
    args = parser.parse_args()

    facts = machine_facts(cuda_used=False)
    print_facts(facts)
    tmp = Path(tempfile.mkdtemp(prefix="submit-latency-"))
    report: dict = {"facts": facts, "command": ["cganctl", *SUBMIT]}
    try:
        with real_services(tmp, redis_db=args.redis_db) as env:
            if not args.no_bytecode:
                env.pop("PYTHONDONTWRITEBYTECODE", None)  # as after `pip install`, which compiles the bytecode
            warm = [_timed_submit(env)[0]["id"] for _ in range(args.warmup)]
            queued, walls = [], []
            for _ in range(args.runs):
                job, wall, _ = _timed_submit(env)
                queued.append(job["id"])
                walls.append(wall)
            report["submit_wall_s"] = _stats(walls)

            table = _table(env)
            with workers(env, 1, tmp / "logs", threads=1):
                for job_id in warm + queued:  # drain part 1's jobs: the worker is idle from here on
                    _wait_finished(table, job_id)
                latencies, from_launch = [], []
                for i in range(args.warmup + args.runs):
                    time.sleep(0.5)  # idle: the previous job has finished and been acknowledged
                    submitted, _, launched = _timed_submit(env)
                    job, shards = _wait_finished(table, submitted["id"])
                    first = min(s.started_at for s in shards)
                    if i >= args.warmup:
                        latencies.append((first - job.created_at).total_seconds())
                        from_launch.append((first - launched).total_seconds())
            report["submit_to_first_task_started_s"] = _stats(latencies)
            report["launch_to_first_task_started_s"] = _stats(from_launch)
    finally:
        keep_or_remove(tmp, args.keep)
    finish_facts(report["facts"])

    rows = [
        ["submit wall (s), no worker", fmt(report["submit_wall_s"]["median"], 3), fmt(report["submit_wall_s"]["min"], 3), fmt(report["submit_wall_s"]["max"], 3), args.runs],
        ["created_at -> first task started (s), idle worker", *(fmt(report["submit_to_first_task_started_s"][k], 3) for k in ("median", "min", "max")), args.runs],
        ["submit launched -> first task started (s)", *(fmt(report["launch_to_first_task_started_s"][k], 3) for k in ("median", "min", "max")), args.runs],
    ]
    print_table(["measure", "median", "min", "max", "runs"], rows, title="Submit latency (real PostgreSQL + Redis, one idle worker)")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
