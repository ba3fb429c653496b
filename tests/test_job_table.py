"""The job table on both databases it ships for: migrations from Alembic, atomic transitions."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect

from scheduler import db
from scheduler.errors import NotFound
from scheduler.jobs import JobTable
from scheduler.settings import Settings
from scheduler.specs import GenerateSpec, TrainSpec


@pytest.fixture(params=["sqlite", "postgresql"])
def table(request, tmp_path) -> JobTable:
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
    else:
        settings = Settings(data_dir=tmp_path, database_url=request.getfixturevalue("pg_url"))
    assert db.upgrade(settings) == db.head_revision(settings)
    engine = db.get_engine(settings)
    with engine.begin() as connection:  # a clean slate on the shared session database
        for name in ("models", "job_shards", "jobs", "service_leases"):
            connection.exec_driver_sql(f"DELETE FROM {name}")
    return JobTable(engine)


def _generate(total=10, shard_size=4) -> GenerateSpec:
    return GenerateSpec(model="default:1", counts={"cat": total // 2, "dog": total - total // 2}, shard_size=shard_size)


def _create(table: JobTable, spec=None, **kw):
    spec = spec or TrainSpec(steps=10)
    shards = kw.pop("shards", ())
    return table.create(spec, queue="gpu", priority=0, max_attempts=kw.pop("max_attempts", 3), progress_total=10, progress_unit="steps", shard_counts=shards)


def test_schema_comes_from_alembic(table):
    names = set(inspect(table.engine).get_table_names())
    assert {"jobs", "job_shards", "models", "alembic_version"} <= names


def test_lifecycle_and_late_delivery_never_moves_back(table):
    job = _create(table)
    assert job.status == "queued" and job.attempts == 0
    assert table.claim(job.id, "w1") == "ok"
    running = table.get(job.id)
    assert (running.status, running.attempts, running.worker) == ("running", 1, "w1")
    assert running.started_at is not None
    table.progress(job.id, 5, info={"g_loss": 1.0})
    assert table.get(job.id).progress_done == 5
    assert table.succeed(job.id, metrics={"fid": 1.0}, artifacts={"model": "k"})
    # a duplicate delivery after the end: nothing changes
    assert table.claim(job.id, "w2") == "finished"
    assert not table.fail(job.id, "late failure")
    assert not table.succeed(job.id, metrics={}, artifacts={})
    done = table.get(job.id)
    assert (done.status, done.worker, done.metrics, done.attempts) == ("succeeded", "w1", {"fid": 1.0}, 1)
    assert done.finished_at >= done.started_at >= done.created_at


def _expire_leases(table: JobTable, job_id: str) -> None:
    """What a dead worker leaves behind: its lease is in the past."""
    from datetime import timedelta

    from sqlalchemy import update

    past = db.utcnow() - timedelta(seconds=1)
    with table.engine.begin() as c:
        c.execute(update(db.Job).where(db.Job.id == job_id).values(lease_expires_at=past))
        c.execute(update(db.Shard).where(db.Shard.job_id == job_id).values(lease_expires_at=past))


def test_attempt_cap_fails_the_job(table):
    job = _create(table, max_attempts=2)
    assert table.claim(job.id, "w1") == "ok"
    assert table.claim(job.id, "w2") == "busy"  # a duplicate while w1's lease is live: dropped
    _expire_leases(table, job.id)
    assert table.claim(job.id, "w2") == "ok"  # redelivered after a lost worker
    _expire_leases(table, job.id)
    assert table.claim(job.id, "w3") == "exhausted"
    failed = table.get(job.id)
    assert failed.status == "failed" and "gave up after 2 attempts" in failed.error


def test_cancel_queued_at_once_running_at_boundary(table):
    queued = _create(table)
    assert table.request_cancel(queued.id) == "cancelled"
    assert table.get(queued.id).status == "cancelled"
    assert table.claim(queued.id, "w1") == "finished"

    running = _create(table)
    table.claim(running.id, "w1")
    assert not table.should_stop(running.id)
    assert table.request_cancel(running.id) == "cancelling"
    assert table.get(running.id).status == "running"
    assert table.should_stop(running.id)
    assert table.mark_cancelled(running.id)
    assert table.get(running.id).status == "cancelled"
    assert table.request_cancel(running.id) == "cancelled"


def test_shards_progress_sums_and_finish(table):
    spec = _generate(10, 4)
    job = _create(table, spec, shards=[4, 4, 2])
    assert table.claim_shard(job.id, 0, "w1") == "ok"
    assert table.claim_shard(job.id, 2, "w2") == "ok"
    assert table.get(job.id).status == "running"
    table.shard_progress(job.id, 0, 3)
    table.shard_progress(job.id, 2, 1)
    assert table.get(job.id).progress_done == 4
    assert table.finish_shard(job.id, 0, key="k0", sha256="0" * 64, size=1, stats={})
    assert not table.finish_shard(job.id, 0, key="k0", sha256="0" * 64, size=1, stats={})  # duplicate
    assert table.get(job.id).progress_done == 5
    assert table.claim_shard(job.id, 0, "w3") == "finished"  # redelivered finished shard is skipped
    shards = table.shards(job.id)
    assert [s.status for s in shards] == ["succeeded", "pending", "running"]
    assert [s.count for s in shards] == [4, 4, 2]


def test_delete_removes_row_and_shards(table):
    job = _create(table, _generate(), shards=[4, 4, 2])
    table.delete(job.id)
    with pytest.raises(NotFound):
        table.get(job.id)
    assert table.shards(job.id) == []


def test_get_by_prefix_and_list_filters(table):
    a = _create(table)
    b = _create(table, _generate(), shards=[4, 4, 2])
    assert table.get(a.id[:8]).id == a.id
    with pytest.raises(NotFound):
        table.get("ffffffff")
    assert [j.id for j in table.list(kind="generate")] == [b.id]
    assert {j.id for j in table.list(status="queued")} == {a.id, b.id}
    assert len(table.list(limit=1)) == 1


def test_model_versions(table):
    from scheduler.model_registry import ModelRegistry

    models = ModelRegistry(table.engine)
    job = _create(table)
    first = models.register(name="frogs", kind="generator", job_id=job.id, weights_key="a", meta={"classes": ["x"]})
    again = models.register(name="frogs", kind="generator", job_id=job.id, weights_key="a", meta={"classes": ["x"]})
    other = _create(table)
    second = models.register(name="frogs", kind="generator", job_id=other.id, weights_key="b", meta={"classes": ["x"]})
    assert (first.version, again.version, second.version) == (1, 1, 2)
    assert models.get("frogs").version == 2
    assert models.get("frogs", 1).weights_key == "a"
    assert models.get("nope") is None


def test_packaged_head_revision_matches_alembic():
    """The hot path reads the head from the version files without Alembic; it must agree with Alembic."""
    from alembic.script import ScriptDirectory

    from scheduler.migrations import head_revision

    settings = Settings(data_dir="/nonexistent")
    assert head_revision() == ScriptDirectory.from_config(db.alembic_config(settings)).get_current_head()


def test_a_job_taken_back_while_its_delivery_lives_stays_that_delivery_s(table, tmp_path):
    """The table did not answer for longer than the lease, so the running delivery could not renew it; when the table
    answers again the reconciler may take the job back (queued, re-sent) before that delivery's heartbeat comes. The
    heartbeat then makes it running again, the delivery sent meanwhile finds it busy, and the first one's success
    counts (it was refused, and the job ran again from its last checkpoint with one more attempt)."""
    from scheduler.reconcile import Reconciler
    from scheduler.runtime import Runtime

    job = _create(table)
    assert table.claim(job.id, "w1", "task-a:0") == "ok"
    _expire_leases(table, job.id)
    sent: list[str] = []
    runtime = Runtime.create(Settings(data_dir=tmp_path, database_url=str(table.engine.url.render_as_string(hide_password=False))))
    reconciler = Reconciler(runtime, owner="w2", send=lambda record, shard: sent.append(record.id))
    reconciler.run_once()
    assert sent == [job.id] and table.get(job.id).status == "queued"
    assert table.renew_lease(job.id, "task-a:0")  # the first delivery's heartbeat, as the table answers again
    assert table.get(job.id).status == "running"
    assert table.claim(job.id, "w2", "task-b:0") == "busy"  # the re-sent delivery
    assert table.succeed(job.id, metrics={}, artifacts={}, token="task-a:0")
    done = table.get(job.id)
    assert done.status == "succeeded" and done.attempts == 1
    assert table.claim(job.id, "w2", "task-b:0") == "finished"


def test_lease_renewal_same_delivery_and_duty(table):
    job = _create(table, _generate(8, 4), shards=[4, 4])
    assert table.claim_shard(job.id, 0, "w1", "task-a:0") == "ok"
    first = table.shards(job.id)[0]
    assert first.lease_owner == "task-a:0" and first.lease_expires_at > first.heartbeat_at
    assert table.renew_lease(job.id, "task-a:0", shard=0)
    assert not table.renew_lease(job.id, "task-b:0", shard=0)  # not its lease
    assert table.claim_shard(job.id, 0, "w2", "task-b:0") == "busy"
    # a redelivery of the same message (same id, same retry number) is refused while the lease lives
    assert table.claim_shard(job.id, 0, "w2", "task-a:0") == "busy"
    # the task's own retry after a transient error re-claims without counting an attempt
    assert table.claim_shard(job.id, 0, "w1", "task-a:1") == "ok"
    assert table.shards(job.id)[0].attempts == 1
    assert table.live_leases(job.id)
    _expire_leases(table, job.id)
    assert not table.live_leases(job.id)
    assert table.claim_shard(job.id, 0, "w2", "task-a:1") == "ok"  # redelivered after its worker died
    assert table.shards(job.id)[0].attempts == 2
    # the reconciler duty: one holder at a time, taken over once it lapses
    assert table.hold_duty("reconciler", "w1", 30)
    assert table.hold_duty("reconciler", "w1", 30)
    assert not table.hold_duty("reconciler", "w2", 30)
    assert table.hold_duty("reconciler", "w1", -1)
    assert table.hold_duty("reconciler", "w2", 30)


def test_a_task_past_its_time_limit_stops_renewing_and_its_work_is_taken_back(table):
    """A hung task (its thread never returns) on a --pool solo worker: the heartbeat renews the lease until
    the task time limit, then stops, so the lease runs out and another delivery may claim the shard."""
    import time

    from worker.heartbeat import Heartbeat

    table = JobTable(table.engine, lease_timeout=0.6)
    job = _create(table, _generate(8, 4), shards=[4, 4])
    assert table.claim_shard(job.id, 0, "w1", "task-a:0") == "ok"
    first = table.shards(job.id)[0].lease_expires_at
    with Heartbeat(table, job.id, "task-a:0", interval=0.1, shard=0, limit=1.0) as heartbeat:
        time.sleep(0.7)  # past the first lease: only the renewals keep it
        renewed = table.shards(job.id)[0].lease_expires_at
        assert renewed > first and table.live_leases(job.id) and not heartbeat.lost
        assert table.claim_shard(job.id, 0, "w2", "task-b:0") == "busy"
        time.sleep(1.2)  # the "task" is still in here, past its limit: no renewal since, the lease ran out
        assert heartbeat.lost and not heartbeat._thread.is_alive()
        assert not table.live_leases(job.id)
        assert table.claim_shard(job.id, 0, "w2", "task-b:0") == "ok"
    shard = table.shards(job.id)[0]
    assert shard.lease_owner == "task-b:0" and shard.attempts == 2
    assert not table.renew_lease(job.id, "task-a:0", shard=0)  # the hung delivery can no longer write its lease


def test_a_generate_spec_read_back_from_the_table_plans_the_same_shards(table):
    """PostgreSQL's JSONB keeps an object's keys in its own order (by length); the shard plan breaks ties by
    class order, so a spec read back must plan the same shards as the one submitted (embedded or fleet)."""
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    spec = GenerateSpec(model="default:1", counts={name: 7 for name in classes}, shard_size=16)
    job = table.create(spec, queue="gpu", priority=0, max_attempts=3, progress_total=spec.total, progress_unit="images",
                       shard_counts=[spec.shard_range(i)[1] - spec.shard_range(i)[0] for i in range(spec.num_shards)])
    record = table.get(job.id)
    assert list(record.spec["counts"]) == classes  # shown in class order (`jobs show`, the dashboard)
    back = record.parsed_spec()
    assert list(back.counts) == classes
    assert [back.shard_labels(i) for i in range(back.num_shards)] == [spec.shard_labels(i) for i in range(spec.num_shards)]
    assert spec.shard_labels(0)[:10] == classes  # one of each, in class order
