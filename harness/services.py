"""Real services and worker processes for the tests and the bench scripts (no pytest, no torch).

    with real_services(tmpdir) as env:          # SeaweedFS + a fresh PostgreSQL database + Redis db 7
        with workers(env, 2, tmpdir, threads=1) as ws:   # `cganctl worker` processes, ready
            run_cganctl(env, "submit", "generate", ...)

``real_services`` starts ``weed mini`` (:mod:`harness.s3server`), creates the database
``cganctl_bench_<random>`` and runs ``cganctl db upgrade`` on it, flushes the Redis database, and
yields the environment for ``cganctl`` (CLI and workers). On exit, even on error: the S3 server is
stopped, the Redis database flushed and the PostgreSQL database dropped.
``tests/conftest.py`` builds its fixtures from the same pieces.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness import s3server
from harness.worker_process import Worker

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CGAN_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CGAN_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = 7
BUCKET = "cganctl-bench"


def cganctl_command() -> list[str]:
    """``cganctl`` next to the running interpreter (the venv's script), else ``python -m scheduler``."""
    script = Path(sys.executable).parent / "cganctl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "scheduler"]


def base_env(data_dir: Path) -> dict[str, str]:
    """This process's environment without any ``CGAN_*`` variable, plus a fresh ``CGAN_DATA_DIR``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGAN_")}
    env["CGAN_DATA_DIR"] = str(data_dir)
    return env


def settings_from_env(env: dict[str, str]):
    """The :class:`scheduler.settings.Settings` that a ``cganctl`` process with ``env`` would read."""
    from scheduler.settings import Settings

    return Settings(**{k[len("CGAN_"):].lower(): v for k, v in env.items() if k.startswith("CGAN_")})  # type: ignore[arg-type]


def cganctl(env: dict[str, str], *args: str, timeout: float | None = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``cganctl ARGS`` as a user would (a subprocess with ``env``); ``check`` raises on a non-zero exit."""
    result = subprocess.run([*cganctl_command(), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"cganctl {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return result


def submit_and_wait(env: dict[str, str], *args: str, timeout: float | None = None) -> tuple[dict, float]:
    """Run ``cganctl submit ... --wait --json``; returns the finished job's JSON and the wall seconds."""
    t0 = time.perf_counter()
    result = cganctl(env, *args, timeout=timeout)
    wall = time.perf_counter() - t0
    try:
        job = json.loads(result.stdout)
    except json.JSONDecodeError:
        job = None
    if result.returncode != 0 or not job or job.get("status") != "succeeded":
        raise RuntimeError(
            f"cganctl {' '.join(args)} exited {result.returncode} (job status {job and job.get('status')})\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return job, wall


@contextmanager
def postgres_database(prefix: str = "cganctl_bench") -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL), dropped on exit."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def redis_database(number: int = REDIS_DB) -> Iterator[str]:
    """Redis database ``number``, flushed before and after."""
    import redis

    url = f"{REDIS_BASE}/{number}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
    finally:
        try:
            client.flushdb()
        finally:
            client.close()


@contextmanager
def real_services(tmpdir: str | Path, *, redis_db: int = REDIS_DB, bucket: str = BUCKET) -> Iterator[dict[str, str]]:
    """SeaweedFS + fresh PostgreSQL database (migrated) + Redis db: yields the env for ``cganctl``."""
    tmp = Path(tmpdir)
    tmp.mkdir(parents=True, exist_ok=True)
    server = s3server.start_weed(tmp / "s3", bucket=bucket)
    try:
        with postgres_database() as pg_url, redis_database(redis_db) as redis_url:
            env = base_env(tmp / "data")
            env.update(
                CGAN_DATABASE_URL=pg_url,
                CGAN_BROKER_URL=redis_url,
                CGAN_S3_ENDPOINT_URL=server.endpoint_url,
                CGAN_S3_BUCKET=server.bucket,
                CGAN_S3_ACCESS_KEY_ID="bench-key",
                CGAN_S3_SECRET_ACCESS_KEY="bench-secret",
            )
            cganctl(env, "db", "upgrade", timeout=120, check=True)
            yield env
    finally:
        server.stop()


def start_s3(tmpdir: str | Path, bucket: str = BUCKET) -> "s3server.S3Server":
    """A bare SeaweedFS S3 server (a context manager that stops it)."""
    return s3server.start_weed(Path(tmpdir), bucket=bucket)


@contextmanager
def workers(
    env: dict[str, str], count: int, logdir: str | Path, *, threads: int | None = None, queues: str = "gpu", prefix: str = "w"
) -> Iterator[list[Worker]]:
    """Start ``count`` workers named ``w1..wK`` and wait until every one is ready; stop all on exit."""
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    started: list[Worker] = []
    try:
        for k in range(1, count + 1):
            started.append(Worker(env, f"{prefix}{k}", logdir / f"worker-{prefix}{k}.log", queues=queues, threads=threads, command=cganctl_command()))
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy (returned) or ``timeout`` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def keep_or_remove(path: Path, keep: bool) -> None:
    if keep:
        print(f"kept work folder {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)
