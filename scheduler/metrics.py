"""Control-plane metrics, ``cganctl metrics --port N``: the broker's queues and the job table, read at scrape time.

One custom collector asks Redis and the database on every scrape (nothing is cached, nothing runs
between scrapes). Labels are bounded: queue names the deployment knows (``CGAN_DEFAULT_QUEUE``,
``CGAN_ROUTES`` and the queues kombu has bindings for), job kind and status. A service that does not
answer gives ``cganctl_service_up{service=...} 0`` (broker, database, object_store) instead of failing the scrape.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .errors import ServiceUnavailable
from .health import in_background
from .settings import Settings
from .taskmessages import PRIORITY_LEVELS, priority_lists

log = logging.getLogger(__name__)

_INTERNAL_QUEUE_PREFIXES = ("celeryev", "celery.pidbox", "reply.celery")


class ControlPlaneCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis = None
        self._store = None

    def _client(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.settings.broker_url, socket_timeout=3, socket_connect_timeout=3)
        return self._redis

    def known_queues(self, client, active: set[str]) -> list[str]:
        """The configured queues, those workers declared (kombu bindings), and ``active`` ones of unfinished
        jobs (a submit on the lean path sends without declaring its queue)."""
        names = {self.settings.default_queue, *self.settings.routes.values(), *active}
        for key in client.scan_iter(match="_kombu.binding.*", count=100):
            name = key.decode().removeprefix("_kombu.binding.")
            if not name.startswith(_INTERNAL_QUEUE_PREFIXES):
                names.add(name)
        return sorted(names)

    def collect(self):
        up = GaugeMetricFamily("cganctl_service_up", "1 if the service answered this scrape, else 0.", labels=["service"])
        # the job table and the bucket are asked at once, each bounded, so that both down cost one wait, not two
        store_answer = in_background(lambda: self._object_store().check())  # a HEAD of the bucket
        try:  # one bounded reading: a database that stops answering must not hang the scrape (its pooled socket would)
            table = in_background(lambda: read_table(self.settings))(DATABASE_WAIT_S)
            up.add_metric(["database"], 1)
        except Exception as exc:
            log.warning("job table not scraped: %s", exc)
            table = None
            up.add_metric(["database"], 0)
        if self.settings.broker_url:
            try:
                yield from self._broker(table.active_queues if table else set())
                up.add_metric(["broker"], 1)
            except Exception as exc:  # the scrape reports the outage, it does not fail
                log.warning("broker not scraped: %s", exc)
                up.add_metric(["broker"], 0)
        if table is not None:
            yield from table.families()
        try:
            store_answer(STORE_WAIT_S)  # a frozen S3 must not hang the scrape
            up.add_metric(["object_store"], 1)
        except Exception as exc:
            log.warning("object store not reached: %s", exc)
            up.add_metric(["object_store"], 0)
        yield up

    def _object_store(self):
        if self._store is None:
            from .store import open_store

            self._store = open_store(self.settings)
        return self._store

    def _broker(self, active: set[str]):
        client = self._client()
        queues = self.known_queues(client, active)
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for name in priority_lists(queue):
                    pipe.llen(name)
            pipe.hlen("unacked")
            lengths = pipe.execute()
        depth = GaugeMetricFamily("cganctl_queue_length", "Task messages waiting in the queue (all priority lists), not yet delivered.", labels=["queue"])
        for i, queue in enumerate(queues):
            depth.add_metric([queue], sum(lengths[i * PRIORITY_LEVELS:(i + 1) * PRIORITY_LEVELS]))
        yield depth
        yield GaugeMetricFamily(
            "cganctl_broker_unacked_messages",
            "Messages delivered to workers and not yet acknowledged (tasks running or prefetched), all queues; a worker that"
            " died mid-task leaves its message here until CGAN_VISIBILITY_TIMEOUT (its work was sent again by the reconciler).",
            value=lengths[-1],
        )


DATABASE_WAIT_S = 5.0  # a scrape's whole reading of the job table; Prometheus' default scrape timeout is 10 s
STORE_WAIT_S = 5.0  # the bucket's HEAD, asked at the same time


@dataclass
class TableReading:
    """What one scrape reads from the job table (:func:`read_table`), turned into metric families."""

    counts: dict[tuple[str, str], int]
    oldest_queued_age: float
    idle_age: float
    expired: int
    active_queues: set[str]

    def families(self):
        from .specs import JobKind, JobStatus

        jobs = GaugeMetricFamily("cganctl_jobs", "Jobs in the job table by kind and status.", labels=["kind", "status"])
        for kind in JobKind:
            for status in JobStatus:
                jobs.add_metric([kind.value, status.value], self.counts.get((kind.value, status.value), 0))
        yield jobs
        yield GaugeMetricFamily("cganctl_oldest_queued_job_age_seconds", "Seconds since the oldest still-queued job was submitted; 0 when none waits.", value=self.oldest_queued_age)
        yield GaugeMetricFamily(
            "cganctl_unfinished_work_idle_seconds",
            "Seconds since any unfinished (queued or running) job, or a shard of one, last changed or sent a heartbeat; 0 when"
            " none is unfinished. It grows only when nothing runs the work there is: every worker gone or hung.",
            value=self.idle_age,
        )
        yield GaugeMetricFamily(
            "cganctl_expired_leases",
            "Running jobs and shards whose lease ran out (worker gone, or hung past its time limit) and that no reconciler has taken back yet.",
            value=self.expired,
        )


def read_table(settings: Settings) -> TableReading:
    """The job table's figures for one scrape, over one connection."""
    from sqlalchemy import func, select

    from .db import Job, Shard, get_engine
    from .jobs import ACTIVE, JobTable
    from .specs import JobStatus

    now = datetime.now(timezone.utc)

    def age(moment: datetime | None) -> float:
        if moment is None:
            return 0.0
        if moment.tzinfo is None:  # SQLite returns naive UTC
            moment = moment.replace(tzinfo=timezone.utc)
        return max((now - moment).total_seconds(), 0.0)

    engine = get_engine(settings)
    with engine.connect() as connection:
        counts = {(kind, status): n for kind, status, n in connection.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))}
        oldest = connection.execute(select(func.min(Job.created_at)).where(Job.status == JobStatus.queued.value)).scalar()
        unfinished = Job.status.in_(ACTIVE)
        active = set(connection.execute(select(Job.queue).where(unfinished).distinct()).scalars())
        moments = [
            connection.execute(select(func.max(Job.updated_at)).where(unfinished)).scalar(),
            connection.execute(select(func.max(Job.heartbeat_at)).where(unfinished)).scalar(),
            connection.execute(select(func.max(Shard.heartbeat_at)).join(Job, Job.id == Shard.job_id).where(unfinished)).scalar(),
            connection.execute(select(func.max(Shard.finished_at)).join(Job, Job.id == Shard.job_id).where(unfinished)).scalar(),
        ]
    latest = [age(m) for m in moments if m is not None]
    return TableReading(
        counts=counts, oldest_queued_age=age(oldest), idle_age=min(latest) if latest else 0.0,
        expired=JobTable(engine).count_expired_leases(), active_queues=active,
    )


def registry_for(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ControlPlaneCollector(settings))
    return registry


def listen(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> None:
    """Serve ``registry`` (default: the process's own) on ``addr:port`` in a daemon thread.

    A port that cannot be bound (taken, privileged) is :class:`ServiceUnavailable`: one error line, exit 3.
    """
    from prometheus_client import REGISTRY, start_http_server

    try:
        start_http_server(port, addr=addr, registry=registry or REGISTRY)
    except OSError as exc:
        raise ServiceUnavailable(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None


def serve_forever(settings: Settings, port: int, addr: str = "0.0.0.0", on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the control-plane ``/metrics`` until the process is stopped; ``on_ready(url)`` once it listens."""
    from .db import prefer_fresh_connections

    prefer_fresh_connections()
    listen(port, addr, registry=registry_for(settings))
    if on_ready is not None:
        on_ready(f"http://{addr}:{port}/metrics")
    while True:
        time.sleep(3600)
