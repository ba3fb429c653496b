"""The submit hot path (``scheduler.lean``): same rows and same messages as the ORM/Celery path, on the real services.

The fleet tests (``test_fleet.py``: priorities, routing, cancel, retry) submit through this path too,
so a real worker running what it sent is covered there as well as here.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys

import redis

from harness.services import cganctl, postgres_database, settings_from_env, wait_for

HEAVY = ("sqlalchemy", "celery", "kombu", "alembic", "torch", "boto3")

SUBMIT_AND_LIST_MODULES = """
import json, sys
from scheduler.cli import main
sys.argv = ["cganctl", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(%r))}))
""" % (HEAVY,)


def _submit_in_process(env: dict[str, str], *args: str) -> tuple[dict, dict]:
    """Run a submit in a fresh interpreter; its job JSON and which heavy packages it imported."""
    result = subprocess.run([sys.executable, "-c", SUBMIT_AND_LIST_MODULES, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *job_lines, modules_line = result.stdout.strip().splitlines()
    return json.loads("\n".join(job_lines)), json.loads(modules_line)


def test_fleet_submit_imports_only_what_it_needs_and_a_worker_runs_it(fleet_env, table, start_worker):
    job, facts = _submit_in_process(fleet_env, "submit", "generate", "--label", "frog", "--count", "24", "--shard-size", "12", "--json")
    assert facts["code"] in (None, 0) and facts["heavy"] == [], facts
    row = table.get(job["id"])  # written by psycopg, read back by the ORM
    assert (row.status, row.kind, row.progress_total, len(table.shards(row.id))) == ("queued", "generate", 24, 2)
    start_worker()
    wait_for(lambda: table.get(job["id"]).status == "succeeded", timeout=180, what="the lean-submitted job to succeed")
    assert [s.status for s in table.shards(job["id"])] == ["succeeded", "succeeded"]


def test_lean_submit_can_be_turned_off(fleet_env, table):
    _job, facts = _submit_in_process(dict(fleet_env, CGAN_LEAN_SUBMIT="false"), "submit", "generate", "--label", "cat", "--count", "10", "--json")
    assert {"sqlalchemy", "celery", "kombu"} <= set(facts["heavy"])


def test_lean_rows_equal_orm_rows(fleet_env, table):
    from scheduler.lean import LeanSubmit
    from scheduler.specs import GenerateSpec

    spec = GenerateSpec(model="default:1", counts={"frog": 25, "cat": 5}, seed=3, shard_size=10)
    kwargs = dict(queue="gpu", priority=4, max_attempts=3, progress_total=30, progress_unit="images", shard_counts=[10, 10, 10])
    lean = LeanSubmit(settings_from_env(fleet_env))
    made = [table.create(spec, **kwargs), lean.table.create(spec, **kwargs)]
    read = [table.get(job.id) for job in made]
    varying = {"id", "created_at", "updated_at"}
    orm, via_lean = ({k: v for k, v in job.to_dict().items() if k not in varying} for job in read)
    assert orm == via_lean
    assert [job.to_dict() for job in made] == [job.to_dict() for job in read]  # what submit returns is what the table holds
    orm_shards, lean_shards = ([{k: v for k, v in s.to_dict().items() if k != "job_id"} for s in table.shards(job.id)] for job in made)
    assert orm_shards == lean_shards and len(lean_shards) == 3
    lean.table.delete(made[1].id)
    assert table.shards(made[1].id) == []
    lean.db.close()


def test_lean_message_equals_celerys(fleet_env, redis_url):
    """What a real Celery client puts on Redis, and what the lean path puts there, differ only in ids."""
    from scheduler.dispatch import CeleryDispatcher
    from scheduler.lean import RedisDispatcher
    from scheduler.records import JobRecord
    from scheduler.runtime import Runtime

    settings = settings_from_env(fleet_env)
    client = redis.Redis.from_url(redis_url)

    def sent(send, queue: str, priority: int) -> tuple[list[str], list[dict]]:
        job = JobRecord.from_values(dict(id="a" * 32, kind="generate", status="queued", queue=queue, priority=priority, spec={}, attempts=0, max_attempts=3,
                                         progress_done=0, cancel_requested=False))
        send(job)
        keys = sorted(k.decode() for k in client.keys(f"{queue}*"))
        messages = [json.loads(m) for key in keys for m in reversed(client.lrange(key, 0, -1))]
        client.delete(*keys)
        return [k.removeprefix(queue) for k in keys], messages

    def normalised(message: dict) -> dict:
        message = json.loads(json.dumps(message))
        for name in ("id", "root_id", "origin"):
            message["headers"].pop(name)
        for name in ("correlation_id", "reply_to", "delivery_tag"):
            message["properties"].pop(name)
        message["properties"]["delivery_info"].pop("routing_key")
        message["body"] = json.loads(base64.b64decode(message["body"]))
        return message

    celery = CeleryDispatcher(Runtime(settings))
    lean = RedisDispatcher(settings)
    for priority in (0, 5, 9):
        celery_keys, by_celery = sent(lambda job: celery.send(job, [0, 1]), f"parity-celery-{priority}", priority)
        lean_keys, by_lean = sent(lambda job: lean.enqueue(job, 2), f"parity-lean-{priority}", priority)
        assert celery_keys == lean_keys and len(by_lean) == 2, (celery_keys, lean_keys)
        assert [normalised(m) for m in by_celery] == [normalised(m) for m in by_lean]
        assert by_lean[0]["headers"]["id"] == by_lean[0]["headers"]["root_id"] == by_lean[0]["properties"]["correlation_id"]
        assert by_lean[1]["properties"]["delivery_info"]["routing_key"] == f"parity-lean-{priority}"


def test_lean_submit_broker_down_is_one_line_and_no_row(fleet_env, table):
    before = len(table.list(limit=1000))
    result = cganctl(dict(fleet_env, CGAN_BROKER_URL="redis://:hunter2@127.0.0.1:1/0"), "submit", "generate", "--label", "frog", "--count", "10")
    assert result.returncode == 3 and result.stderr.startswith("error: broker redis://") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert len(table.list(limit=1000)) == before


def test_malformed_redis_url_is_a_settings_error_on_both_paths(fleet_env, table):
    before = len(table.list(limit=1000))
    for lean in ("true", "false"):
        for url, rule in [("redis://:pw@127.0.0.1:notaport/0", "the port is not a number"), ("redis://127.0.0.1:6379/abc", "must be a database number")]:
            result = cganctl(dict(fleet_env, CGAN_BROKER_URL=url, CGAN_LEAN_SUBMIT=lean), "submit", "generate", "--label", "frog", "--count", "10")
            assert result.returncode == 2 and result.stderr.startswith("error: invalid setting CGAN_BROKER_URL") and rule in result.stderr, result.stderr
            assert len(result.stderr.splitlines()) == 1 and "pw" not in result.stderr
    assert len(table.list(limit=1000)) == before


def test_lean_submit_refuses_a_database_not_at_head(fleet_env):
    with postgres_database("cganctl_lean") as url:
        result = cganctl(dict(fleet_env, CGAN_DATABASE_URL=url), "submit", "generate", "--label", "frog", "--count", "10")
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().endswith("is not at the current schema; run `cganctl db upgrade`") and len(result.stderr.splitlines()) == 1
