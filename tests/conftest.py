"""Shared fixtures: real PostgreSQL, Redis and SeaweedFS (S3), and environments for the CLI.

PostgreSQL and Redis are the machine's own (127.0.0.1:5432 trust auth, 127.0.0.1:6379; `.ci/run`
starts them if they are down). Each test session gets its own PostgreSQL database and its own Redis
database number, and starts its own `weed mini` on free ports.
"""
from __future__ import annotations

import os

import pytest

from harness.services import Worker, base_env, postgres_database, redis_database, settings_from_env, start_s3


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with postgres_database("cganctl_test") as url:
        yield url
        from scheduler.db import _engine_for

        _engine_for.cache_clear()


@pytest.fixture(scope="session")
def redis_url():
    """A Redis database number of its own (flushed before and after)."""
    with redis_database(10 + os.getpid() % 5) as url:
        yield url


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    with start_s3(tmp_path_factory.mktemp("s3"), bucket="cganctl-test") as server:
        yield server


@pytest.fixture
def embedded_env(tmp_path) -> dict[str, str]:
    """Environment for a `cganctl` process on the embedded default, in a fresh data folder."""
    return base_env(tmp_path / "data")


@pytest.fixture
def fleet_env(tmp_path, pg_url, redis_url, s3) -> dict[str, str]:
    """Environment for `cganctl` and workers on the real services: Redis, PostgreSQL, SeaweedFS."""
    env = base_env(tmp_path / "data")
    env.update(
        CGAN_DATABASE_URL=pg_url,
        CGAN_BROKER_URL=redis_url,
        CGAN_S3_ENDPOINT_URL=s3.endpoint_url,
        CGAN_S3_BUCKET=s3.bucket,
        CGAN_S3_ACCESS_KEY_ID="test-key",
        CGAN_S3_SECRET_ACCESS_KEY="test-secret-do-not-print",
    )
    return env


@pytest.fixture
def table(fleet_env):
    """The fleet's job table (PostgreSQL), migrated."""
    from scheduler import db
    from scheduler.jobs import JobTable

    settings = settings_from_env(fleet_env)
    db.upgrade(settings)
    return JobTable(db.get_engine(settings))


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

