"""Shared fixtures: real PostgreSQL, Redis and SeaweedFS (S3), and environments for the CLI.

PostgreSQL and Redis are the machine's own (127.0.0.1:5432 trust auth, 127.0.0.1:6379; `.ci/run`
starts them if they are down). Each test session gets its own PostgreSQL database and its own Redis
database number, and starts its own `weed mini` on free ports.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from worker_process import Worker

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CGAN_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CGAN_TEST_REDIS", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"cganctl_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from scheduler.db import _engine_for

    _engine_for.cache_clear()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url():
    """A Redis database number of its own (flushed before and after)."""
    import redis

    number = 10 + os.getpid() % 5
    url = f"{REDIS_BASE}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    from s3server import start_weed

    server = start_weed(tmp_path_factory.mktemp("s3"), bucket="cganctl-test")
    yield server
    server.stop()


@pytest.fixture
def embedded_env(tmp_path) -> dict[str, str]:
    """Environment for a `cganctl` process on the embedded default, in a fresh data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGAN_")}
    env["CGAN_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.fixture
def fleet_env(tmp_path, pg_url, redis_url, s3) -> dict[str, str]:
    """Environment for `cganctl` and workers on the real services: Redis, PostgreSQL, SeaweedFS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGAN_")}
    env.update(
        CGAN_DATA_DIR=str(tmp_path / "data"),
        CGAN_DATABASE_URL=pg_url,
        CGAN_BROKER_URL=redis_url,
        CGAN_S3_ENDPOINT_URL=s3.endpoint_url,
        CGAN_S3_BUCKET=s3.bucket,
        CGAN_S3_ACCESS_KEY_ID="test-key",
        CGAN_S3_SECRET_ACCESS_KEY="test-secret-do-not-print",
    )
    return env


def settings_from_env(env: dict[str, str]):
    from scheduler.settings import Settings

    return Settings(**{k[len("CGAN_"):].lower(): v for k, v in env.items() if k.startswith("CGAN_")})


def cganctl(env: dict[str, str], *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"cganctl {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def start_worker(fleet_env, tmp_path):
    workers: list[Worker] = []

    def start(name: str = "w1", queues: str = "gpu,cpu", env: dict[str, str] | None = None) -> Worker:
        worker = Worker(env or fleet_env, name, tmp_path / f"worker-{name}.log", queues=queues, threads=1)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
