"""Integration: the CLI submits through Redis to real Celery worker processes, which write to a real
S3 server (SeaweedFS) and record the job in PostgreSQL. Nothing is mocked."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time

import pytest

from harness.datasets import tiny_image_folder
from harness.services import ROOT, cganctl, cganctl_command, settings_from_env, wait_for
from scheduler.store import S3Store

pytestmark = pytest.mark.integration


@pytest.fixture
def store(fleet_env) -> S3Store:
    return S3Store(settings_from_env(fleet_env))


def test_generate_through_redis_worker_s3_and_postgres(fleet_env, start_worker, table, store):
    start_worker("w1")
    result = cganctl(fleet_env, "submit", "generate", "--balanced", "--per-class", "20", "--shard-size", "50", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded"

    row = table.get(job["id"])  # the row in PostgreSQL
    assert row.status == "succeeded" and row.progress_done == 200 and row.worker.startswith("w1@")
    assert row.attempts == 1 and row.started_at and row.finished_at
    assert "test-secret" not in json.dumps(row.to_dict())
    shards = table.shards(row.id)
    assert [s.status for s in shards] == ["succeeded"] * 4 and all(s.attempts == 1 for s in shards)

    keys = list(store.list(f"jobs/{row.id}/"))  # the objects in the bucket
    assert sorted(keys) == sorted([f"jobs/{row.id}/shards/shard-{i:06d}.tar" for i in range(4)] + [f"jobs/{row.id}/manifest.json", f"jobs/{row.id}/contact-sheet.png"])
    manifest = json.loads(store.get_bytes(f"jobs/{row.id}/manifest.json"))
    assert manifest["count"] == 200 and manifest["count_per_class"] == {c: 20 for c in manifest["classes"]}
    for entry in manifest["files"]:
        assert hashlib.sha256(store.get_bytes(entry["key"])).hexdigest() == entry["sha256"]

    status = json.loads(cganctl(fleet_env, "status", "--json", check=True).stdout)
    assert all(part["ok"] for part in status["services"].values())
    assert any(name.startswith("w1@") and w["queues"] == ["cpu", "gpu"] for name, w in status["workers"].items())
    shown = cganctl(fleet_env, "jobs", "show", row.id, check=True).stdout
    assert "succeeded" in shown and "test-secret" not in shown


def test_three_workers_share_one_job(fleet_env, start_worker, table, store):
    for name in ("w1", "w2", "w3"):
        start_worker(name)
    out = cganctl(fleet_env, "submit", "generate", "--balanced", "--per-class", "30", "--shard-size", "25", "--wait", "--json", check=True).stdout
    job = json.loads(out)
    shards = table.shards(job["id"])
    assert len(shards) == 12 and all(s.status == "succeeded" and s.attempts == 1 for s in shards)
    spread = {s.worker.split("@")[0] for s in shards}
    assert len(spread) >= 2, spread
    keys = [k for k in store.list(f"jobs/{job['id']}/shards/")]
    assert keys == [f"jobs/{job['id']}/shards/shard-{i:06d}.tar" for i in range(12)]
    manifest = json.loads(store.get_bytes(f"jobs/{job['id']}/manifest.json"))
    assert [f["name"] for f in manifest["files"]] == [k.rsplit("/", 1)[1] for k in keys]
    assert sum(f["count"] for f in manifest["files"]) == 300


def test_queue_routing(fleet_env, start_worker, table, tmp_path):
    queue = "routed"  # a queue of this test's own: the job table is shared by the session's tests
    start_worker("gpuonly", queues="gpu")
    out = cganctl(fleet_env, "submit", "generate", "--label", "frog", "--count", "5", "--queue", queue, "--json", check=True).stdout
    job_id = json.loads(out)["id"]
    time.sleep(3)
    assert table.get(job_id).status == "queued"  # nobody consumes it yet
    # the operator is told: `status` names the queue nobody consumes, and so does a `--wait` that stays queued
    assert json.loads(cganctl(fleet_env, "status", "--json", check=True).stdout)["unserved"].get(queue) == 1
    warning = f"no live worker consumes queue '{queue}'; start one with: cganctl worker --queues {queue}"
    assert f"warning: 1 job queued on '{queue}' and {warning}" in cganctl(fleet_env, "status", check=True).stdout
    log = tmp_path / "wait.log"
    with open(log, "w") as err:
        waiting = subprocess.Popen([*cganctl_command(), "submit", "generate", "--label", "frog", "--count", "5", "--queue", queue, "--wait"],
                                   env=fleet_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            wait_for(lambda: f"warning: {warning}" in log.read_text(), timeout=60)
            start_worker("routedonly", queues=queue)
            out, _ = waiting.communicate(timeout=120)  # the warning does not end the wait: the job runs once a worker comes
        finally:
            waiting.kill()
    assert waiting.returncode == 0 and "succeeded" in out, (out, log.read_text())
    wait_for(lambda: table.get(job_id).status == "succeeded", timeout=90)
    assert table.get(job_id).worker.startswith("routedonly@")
    assert queue not in json.loads(cganctl(fleet_env, "status", "--json", check=True).stdout)["unserved"]


def test_cancel_queued_and_running_then_retry_resumes(fleet_env, start_worker, table, store, tmp_path):
    data = tiny_image_folder(tmp_path / "data" / "datasets" / "tiny")  # under the fleet's dataset root
    submit = ["submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "1000000", "--batch-size", "8", "--checkpoint-every", "20", "--json"]
    fleet_env = dict(fleet_env, CGAN_MAX_CHECKPOINTS="100000")  # a long job checkpointing often, on purpose
    queued = json.loads(cganctl(fleet_env, *submit, check=True).stdout)
    assert "cancelled" in cganctl(fleet_env, "jobs", "cancel", queued["id"], check=True).stdout
    assert table.get(queued["id"]).status == "cancelled"

    start_worker("w1")
    running = json.loads(cganctl(fleet_env, *submit, check=True).stdout)
    wait_for(lambda: store.exists(f"jobs/{running['id']}/checkpoints/latest.json"), timeout=120)
    assert "it stops after its current training step" in cganctl(fleet_env, "jobs", "cancel", running["id"], check=True).stdout
    wait_for(lambda: table.get(running["id"]).status == "cancelled", timeout=60)
    checkpoint = json.loads(store.get_bytes(f"jobs/{running['id']}/checkpoints/latest.json"))

    retried = json.loads(cganctl(fleet_env, "jobs", "retry", running["id"], "--json", check=True).stdout)
    assert retried["retry_of"] == running["id"] and retried["id"] != running["id"]
    assert retried["spec"]["resume_from"] == running["id"]
    first = wait_for(lambda: (lambda j: j.progress_done and j)(table.get(retried["id"])), timeout=120)
    assert first.progress_done >= checkpoint["step"]  # resumed, did not start from step 0
    cganctl(fleet_env, "jobs", "cancel", retried["id"], check=True)
    wait_for(lambda: table.get(retried["id"]).status == "cancelled", timeout=60)
    assert cganctl(fleet_env, "jobs", "retry", retried["id"] + "x").returncode == 2


def test_lost_worker_task_is_redelivered_and_attempt_counted(fleet_env, start_worker, table, store, tmp_path):
    env = dict(fleet_env, CGAN_VISIBILITY_TIMEOUT="4")
    data = tiny_image_folder(tmp_path / "data" / "datasets" / "tiny")  # under the fleet's dataset root
    first = start_worker("doomed", env=env)
    assert "warning: CGAN_VISIBILITY_TIMEOUT (4 s) is not above CGAN_TASK_TIME_LIMIT (18600 s)" in first.log.read_text(), first.log_tail()
    out = cganctl(env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "400", "--batch-size", "8", "--checkpoint-every", "20", "--json", check=True).stdout
    job_id = json.loads(out)["id"]
    wait_for(lambda: store.exists(f"jobs/{job_id}/checkpoints/latest.json"), timeout=120)
    first.stop(signal.SIGKILL)  # the worker dies mid-task: no ack was sent (late acks)
    assert table.get(job_id).status == "running"
    start_worker("rescuer", env=env)
    done = wait_for(lambda: (lambda j: j.finished and j)(table.get(job_id)), timeout=180)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2 and done.worker.startswith("rescuer@")
    from scheduler.model_registry import ModelRegistry

    model = ModelRegistry(table.engine).get("mlp-gan")
    assert model is not None and model.job_id == job_id


def test_train_then_generate_and_evaluate_with_the_new_model(fleet_env, start_worker, table, store, tmp_path):
    start_worker("w1")
    data = tiny_image_folder(tmp_path / "data" / "datasets" / "tiny")  # under the fleet's dataset root
    out = cganctl(fleet_env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "30", "--batch-size", "8",
                  "--checkpoint-every", "10", "--name", "tinyfrogs", "--wait", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    trained = json.loads(out.stdout)
    assert trained["metrics"]["model"] == "tinyfrogs:1"
    assert {"model", "checkpoint", "loss_curve", "samples"} <= set(trained["artifacts"])
    for step in (10, 20, 30):
        assert store.exists(f"jobs/{trained['id']}/checkpoints/step-{step:07d}/generator.safetensors")
    assert store.get_bytes(trained["artifacts"]["samples"])[:4] == b"\x89PNG"
    # its model comes down from S3 byte for byte, with the model.json that loading it needs
    fetched = cganctl(fleet_env, "results", "download", trained["id"], "--to", str(tmp_path / "model"), check=True).stdout
    assert fetched.strip().endswith("generator.safetensors, loss.png, model.json, samples.png"), fetched
    assert (tmp_path / "model" / "generator.safetensors").read_bytes() == store.get_bytes(trained["artifacts"]["model"])
    assert json.loads((tmp_path / "model" / "model.json").read_text())["job_id"] == trained["id"]

    bad = cganctl(fleet_env, "submit", "generate", "--model", "tinyfrogs", "--label", "dog", "--count", "4")
    assert bad.returncode == 2 and "valid labels: airplane, cat, frog" in bad.stderr
    out = cganctl(fleet_env, "submit", "generate", "--model", "tinyfrogs:1", "--label", "frog", "--count", "16", "--format", "npz", "--wait", "--json", check=True)
    generated = json.loads(out.stdout)
    assert generated["metrics"]["count_per_class"] == {"frog": 16}
    assert json.loads(store.get_bytes(generated["artifacts"]["manifest"]))["model"]["ref"] == "tinyfrogs:1"

    classifier = cganctl(fleet_env, "submit", "train", "--preset", "classifier", "--dataset", str(data), "--steps", "12", "--batch-size", "8",
                         "--checkpoint-every", "6", "--name", "tinyclf", "--wait", "--json", timeout=300)
    assert classifier.returncode == 0, classifier.stderr
    assert json.loads(classifier.stdout)["metrics"]["model"] == "tinyclf:1"
    mismatch = cganctl(fleet_env, "submit", "evaluate", "--model", "tinyfrogs", "--no-inception")
    assert mismatch.returncode == 2 and "other classes" in mismatch.stderr and "pass --classifier" in mismatch.stderr  # the default classifier has 10 classes
    no_reference = cganctl(fleet_env, "submit", "evaluate", "--model", "tinyfrogs", "--classifier", "tinyclf", "--no-inception")
    assert no_reference.returncode == 2 and no_reference.stderr.startswith(  # refused at submit: no job that fails on the worker
        "error: reference cifar10 has classes airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck; model tinyfrogs:1 has airplane, cat, frog"
    ) and "--reference" in no_reference.stderr, no_reference.stderr
    out = cganctl(fleet_env, "submit", "evaluate", "--model", "tinyfrogs", "--classifier", "tinyclf", "--reference", str(data),
                  "--samples-per-class", "6", "--no-inception", "--wait", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    evaluated = json.loads(out.stdout)
    metrics = evaluated["metrics"]
    assert 0 <= metrics["label_accuracy"] <= 1 and metrics["classifier_fid"] >= 0
    assert set(metrics["per_class"]) == {"airplane", "cat", "frog"}
    assert metrics["protocol"]["num_samples"] == 18
    assert store.get_bytes(evaluated["artifacts"]["samples"])[:4] == b"\x89PNG"
    assert json.loads(store.get_bytes(evaluated["artifacts"]["metrics"]))["label_accuracy"] == metrics["label_accuracy"]
    shown = cganctl(fleet_env, "jobs", "show", evaluated["id"], check=True).stdout
    assert "label_accuracy" in shown and "frog" in shown
    assert "or evaluate with --no-classifier" in mismatch.stderr
    out = cganctl(fleet_env, "submit", "evaluate", "--model", "tinyfrogs", "--no-classifier", "--reference", str(data),
                  "--samples-per-class", "3", "--wait", "--json", timeout=300)  # the Inception metrics alone, through Celery and S3
    assert out.returncode == 0, out.stderr
    inception_only = json.loads(out.stdout)
    assert inception_only["spec"]["classifier"] is None and inception_only["metrics"]["inception_fid"] > 0
    assert "label_accuracy" not in inception_only["metrics"] and inception_only["metrics"]["protocol"]["num_samples"] == 9


def test_priority_orders_waiting_jobs(fleet_env, start_worker, table):
    low = json.loads(cganctl(fleet_env, "submit", "generate", "--label", "frog", "--count", "5", "--priority", "0", "--json", check=True).stdout)
    high = json.loads(cganctl(fleet_env, "submit", "generate", "--label", "frog", "--count", "5", "--priority", "9", "--json", check=True).stdout)
    start_worker("w1")
    wait_for(lambda: table.get(low["id"]).finished and table.get(high["id"]).finished, timeout=120)
    assert table.get(high["id"]).started_at < table.get(low["id"]).started_at


def test_a_worker_does_not_start_on_settings_every_task_would_fail_on(fleet_env, table, tmp_path):
    """A refused database login, a job table not at head, an unmakeable data folder or a refused S3 secret:
    one `error:` line and a non-zero exit before any message is taken (not a worker that looks healthy and
    holds or fails every job it gets); a database that does not answer yet is a warning, and it starts."""
    from harness.s3server import start_weed
    from harness.services import postgres_database

    def worker(**env):
        return cganctl({**fleet_env, **env}, "worker", "-n", "preflight@%h", "-Q", "preflight", timeout=120)

    wrong_role = fleet_env["CGAN_DATABASE_URL"].replace("postgres@", "nosuch:pw@", 1)
    with postgres_database("cganctl_preflight") as empty, start_weed(tmp_path / "s3auth", bucket="preflight", credentials=("k", "s")) as s3:
        cases = [
            ({"CGAN_DATABASE_URL": wrong_role}, 3, 'refused the connection: connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  role "nosuch" does not exist'),
            ({"CGAN_DATABASE_URL": empty}, 3, "is at no schema, not at 0002: run `cganctl db upgrade` before starting workers"),
            ({"CGAN_DATA_DIR": "/proc/cganctl-data"}, 2, "invalid setting CGAN_DATA_DIR: cannot create /proc/cganctl-data"),
            ({"CGAN_S3_ENDPOINT_URL": s3.endpoint_url, "CGAN_S3_BUCKET": "preflight", "CGAN_S3_ACCESS_KEY_ID": "k", "CGAN_S3_SECRET_ACCESS_KEY": "wrong"}, 3,
             "(403): the credentials (CGAN_S3_ACCESS_KEY_ID / CGAN_S3_SECRET_ACCESS_KEY) are not accepted"),
        ]
        for env, code, message in cases:
            result = worker(**env)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == code and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (env, result.stderr)
            assert "***" in lines[0] or "nosuch" not in lines[0]  # the password is never printed
        # an S3 server that accepts connections and never answers (frozen): a warning after 15 s, and it starts
        s3.process.send_signal(signal.SIGSTOP)
        try:
            frozen = {"CGAN_S3_ENDPOINT_URL": s3.endpoint_url, "CGAN_S3_BUCKET": "preflight", "CGAN_S3_ACCESS_KEY_ID": "k", "CGAN_S3_SECRET_ACCESS_KEY": "s"}
            _starts_with_a_warning({**fleet_env, **frozen}, "warning: object store: no answer within 15 s (starting anyway: tasks wait for it)")
            started = time.monotonic()  # status answers too (before, its HEAD hung for the client's retries)
            status = cganctl({**fleet_env, **frozen}, "status", "--json", timeout=120)
            assert status.returncode == 3 and time.monotonic() - started < 60, status.stderr
            assert json.loads(status.stdout)["services"]["object store"] == {"ok": False, "detail": "no answer within 15 s", "exit_code": 3}
            # a command that reads the store gives up as soon (before: 5 attempts of a 60 s read timeout, 6 minutes)
            started = time.monotonic()
            listing = cganctl({**fleet_env, **frozen}, "datasets", "list", timeout=400)
            took, lines = time.monotonic() - started, listing.stderr.strip().splitlines()
            assert listing.returncode == 3 and len(lines) == 1 and lines[0].startswith("error: S3 at ") and "is unreachable" in lines[0], listing.stderr
            assert took < 45, took
        finally:
            s3.process.send_signal(signal.SIGCONT)
    # a database that does not answer now: a warning, and the worker starts (tasks wait for it)
    down = fleet_env["CGAN_DATABASE_URL"].replace("127.0.0.1:5432", "127.0.0.1:9", 1)
    _starts_with_a_warning({**fleet_env, "CGAN_DATABASE_URL": down}, "is unreachable")


def _starts_with_a_warning(env: dict[str, str], warning: str) -> None:
    process = subprocess.Popen([*cganctl_command(), "worker", "-n", "preflight@%h", "-Q", "preflight"], env=env,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith("warning: ") and warning in first and "(starting anyway: tasks wait for it)" in first, first
        wait_for(lambda: "ready." in process.stdout.readline() or None, 120, 0, "worker ready")
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_two_workers_of_one_host_started_without_a_name_are_two(fleet_env, table):
    """Without -n each worker is worker<pid>@<host> (Celery's default celery@<host> made two workers of one host
    one row in `cganctl status` and one name in a job's shards)."""
    processes = [subprocess.Popen([*cganctl_command(), "worker", "-Q", "unnamed"], env=fleet_env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        names = []
        for process in processes:
            line = wait_for(lambda p=process: (lambda text: text if "ready." in text else None)(p.stdout.readline()), 120, 0, "worker ready")
            names.append(line.split("INFO/MainProcess] ", 1)[1].split(" ready.")[0])
        assert names[0] != names[1] and all(n.startswith(f"worker{p.pid}@") for n, p in zip(names, processes, strict=True)), names
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
