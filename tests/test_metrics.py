"""Prometheus metrics scraped over HTTP from a real `cganctl metrics` process and a real worker process,
against the real Redis and PostgreSQL (and SeaweedFS for the results)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from harness.datasets import tiny_image_folder
from harness.services import ROOT, Worker, cganctl, wait_for
from scheduler.jobs import JobTable

pytestmark = pytest.mark.integration
QUEUE = "metricsq"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> tuple[str, dict[tuple[str, tuple], float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def _wait_http(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        try:
            _scrape(port)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing serves :{port}")


@pytest.fixture
def control_plane(fleet_env, table):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "scheduler", "metrics", "--port", str(port), "--addr", "127.0.0.1"],
                               env=fleet_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(port, process)
        assert process.stdout.readline() == f"control-plane metrics on http://127.0.0.1:{port}/metrics (read at each scrape; Ctrl-C stops)\n"
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def _count(table: JobTable, kind: str, status: str) -> int:
    return len(table.list(kind=kind, status=status, limit=100_000))


def test_control_plane_and_worker_metrics(fleet_env, table, control_plane, tmp_path):
    submitted = [
        json.loads(cganctl(fleet_env, "submit", "generate", "--label", "frog", "--count", "20", "--shard-size", "10", "--queue", QUEUE, "--json", check=True).stdout),
        json.loads(cganctl(fleet_env, "submit", "generate", "--label", "cat", "--count", "4", "--queue", QUEUE, "--priority", "9", "--json", check=True).stdout),
    ]
    data = tiny_image_folder(tmp_path / "data" / "datasets" / "tiny")  # under the fleet's dataset root
    submitted.append(json.loads(cganctl(fleet_env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "30", "--batch-size", "8",
                                        "--checkpoint-every", "30", "--queue", QUEUE, "--json", check=True).stdout))
    text, samples = _scrape(control_plane)
    assert samples[("cganctl_queue_length", (("queue", QUEUE),))] == 4  # 2 shards + 1 shard (another priority list) + 1 train
    assert samples[("cganctl_jobs", (("kind", "generate"), ("status", "queued")))] == _count(table, "generate", "queued") >= 2
    assert samples[("cganctl_jobs", (("kind", "train"), ("status", "queued")))] == _count(table, "train", "queued") >= 1
    assert samples[("cganctl_jobs", (("kind", "evaluate"), ("status", "running")))] == _count(table, "evaluate", "running")
    assert samples[("cganctl_oldest_queued_job_age_seconds", ())] > 0
    assert 0 < samples[("cganctl_unfinished_work_idle_seconds", ())] < 600  # queued, nothing runs them yet
    assert samples[("cganctl_service_up", (("service", "broker"),))] == 1
    assert samples[("cganctl_service_up", (("service", "database"),))] == 1
    assert samples[("cganctl_service_up", (("service", "object_store"),))] == 1
    assert samples[("cganctl_expired_leases", ())] == 0
    for secret in ("test-secret", "test-key", "frog", "tiny", *(job["id"] for job in submitted), *(job["id"][:8] for job in submitted)):
        assert secret not in text

    port = _free_port()
    worker = Worker(fleet_env, "metered", tmp_path / "worker.log", queues=QUEUE, threads=1, extra_args=["--metrics-port", str(port), "--metrics-addr", "127.0.0.1"])
    try:
        worker.wait_ready()
        assert f"worker metrics on http://127.0.0.1:{port}/metrics" in worker.log_tail()  # this host only, as asked
        for job in submitted:
            wait_for(lambda job=job: table.get(job["id"]).finished, timeout=180)
            assert table.get(job["id"]).status == "succeeded", worker.log_tail()
        text, samples = _scrape(port)
    finally:
        worker.stop()
    generate, train = (("kind", "generate"),), (("kind", "train"),)
    assert samples[("cganctl_worker_tasks_started_total", generate)] == 3
    assert samples[("cganctl_worker_tasks_succeeded_total", generate)] == 3
    assert samples[("cganctl_worker_tasks_failed_total", generate)] == 0
    assert samples[("cganctl_worker_tasks_retried_total", generate)] == 0
    assert samples[("cganctl_worker_tasks_started_total", train)] == 1
    assert samples[("cganctl_worker_tasks_succeeded_total", train)] == 1
    assert samples[("cganctl_worker_tasks_running", generate)] == 0
    assert samples[("cganctl_worker_task_started_timestamp_seconds", generate)] == 0
    assert samples[("cganctl_worker_images_generated_total", ())] == 24
    assert samples[("cganctl_worker_shard_duration_seconds_count", ())] == 3
    assert samples[("cganctl_worker_task_duration_seconds_count", generate)] == 3
    # a kind no task of which ran is there at 0 too (a Grafana p95 panel and rate() need the series to exist)
    assert samples[("cganctl_worker_task_duration_seconds_count", (("kind", "evaluate"),))] == 0
    # reports come every 10 steps; the first interval (data loading, model set-up) is not a step time
    assert samples[("cganctl_worker_train_step_duration_seconds_count", ())] == 20
    assert 0 < samples[("cganctl_worker_train_step_duration_seconds_sum", ())] < 60
    assert not any(name.startswith("cganctl_worker_gpu_") for name, _ in samples)  # no CUDA on this machine
    for secret in ("test-secret", "test-key", "frog", "tiny", *(job["id"] for job in submitted)):
        assert secret not in text

    _, samples = _scrape(control_plane)
    assert samples[("cganctl_queue_length", (("queue", QUEUE),))] == 0
    assert samples[("cganctl_jobs", (("kind", "generate"), ("status", "succeeded")))] == _count(table, "generate", "succeeded") >= 2


def test_control_plane_reports_an_unreachable_broker_and_object_store(fleet_env, table):
    port = _free_port()
    env = dict(fleet_env, CGAN_BROKER_URL=f"redis://127.0.0.1:{_free_port()}/0", CGAN_S3_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}")
    # running work whose worker stopped renewing its lease: counted until a reconciler takes it back
    job = json.loads(cganctl(fleet_env, "submit", "generate", "--label", "frog", "--count", "4", "--queue", "nobody-consumes", "--json", check=True).stdout)
    assert table.claim_shard(job["id"], 0, "gone@host") == "ok"
    with table.engine.begin() as connection:
        connection.execute(text("UPDATE job_shards SET lease_expires_at = now() - interval '1 minute' WHERE job_id = :id"), {"id": job["id"]})
    process = subprocess.Popen([sys.executable, "-m", "scheduler", "metrics", "--port", str(port), "--addr", "127.0.0.1"],
                               env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(port, process)
        _, samples = _scrape(port)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert samples[("cganctl_service_up", (("service", "broker"),))] == 0
    assert samples[("cganctl_service_up", (("service", "database"),))] == 1
    assert samples[("cganctl_service_up", (("service", "object_store"),))] == 0
    assert samples[("cganctl_expired_leases", ())] == 1
    table.delete(job["id"])  # not left for the session's other tests


@pytest.mark.parametrize("command", [["metrics", "--port"], ["worker", "--queues", QUEUE, "--metrics-port"]])
def test_taken_port_is_one_error_line(fleet_env, command):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cganctl(fleet_env, *command, str(port), timeout=60)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot serve metrics on") and str(port) in lines[0], result.stderr


def test_metrics_port_needs_an_in_process_pool(fleet_env):
    result = cganctl(fleet_env, "worker", "--queues", QUEUE, "--pool", "prefork", "--metrics-port", str(_free_port()), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --metrics-port needs --pool solo or threads (a prefork child process would count in its own memory)"
    ]
