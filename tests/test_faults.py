"""Fault injection: real processes and real services, killed and restarted (issue 7).

Each test starts its own Redis and SeaweedFS (and, where it stops the database, its own PostgreSQL)
on free ports, so it can kill and restart them, plus `cganctl worker` processes. Intervals are short
(heartbeat 1 s, lease 5 s, reconcile every 2 s, re-send grace 3 s) so the suite fits in minutes; the
default settings are 10 s / 45 s / 15 s / 30 s. Every test prints its measured recovery time.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.s3server import S3Server, start_weed
from harness.services import ROOT, base_env, cganctl, cganctl_command, postgres_database, settings_from_env, wait_for
from harness.worker_process import Worker

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FAST = {
    "CGAN_HEARTBEAT_INTERVAL": "1",
    "CGAN_LEASE_TIMEOUT": "5",
    "CGAN_RECONCILE_INTERVAL": "2",
    "CGAN_REQUEUE_GRACE": "3",
}
if os.environ.get("CGAN_FAULTS_DEFAULT_INTERVALS"):  # measure with the shipped defaults (10 / 45 / 15 / 30 s)
    FAST = {}
RECOVERY_BOUND_S = 60
S3_OUTAGE_S = float(os.environ.get("CGAN_FAULTS_S3_OUTAGE", "120"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """``redis-server`` without persistence on a free port: stop() loses every message, like a crash."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.dir = tmp / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._pings, 10, 0.05, "redis")

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class PostgresServer:
    """A PostgreSQL cluster of its own (initdb as user postgres), started and stopped with pg_ctl."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        # pytest's tmp folders are 0700 root: user postgres needs a folder of its own it can reach
        self.dir = Path(tempfile.mkdtemp(prefix="cganctl-faults-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres("initdb", "-D", str(self.dir), "-U", "postgres", "--auth=trust")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as_postgres(
            "pg_ctl", "-D", str(self.dir), "-w", "-l", str(self.dir / "log"),
            "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}", "start",
        )

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(self.dir), "-m", "immediate", "stop"], capture_output=True, timeout=60)

    def remove(self) -> None:
        self.signal(signal.SIGCONT)
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def signal(self, number: int) -> None:
        """Send ``number`` to the postmaster and every backend (SIGSTOP: a server that holds its connections
        open and never answers)."""
        pid_file = self.dir / "postmaster.pid"
        if not pid_file.exists():
            return
        main = int(pid_file.read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout.split()
        for pid in [main, *map(int, children)]:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass


def _restart_weed(server: S3Server) -> None:
    """Start ``weed`` again with the same ports and folder (the data written before is kept)."""
    args = server.process.args
    with open(server.log_path, "ab") as log:
        server.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(Path(args[2].split("=", 1)[1])))
    client = server.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
    wait_for(lambda: _bucket_ok(client, server.bucket), 60, 0.2, "weed restart")


def _bucket_ok(client, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception:
        return False


@contextmanager
def fleet(tmp_path: Path, *, own_postgres: bool = False, extra: dict[str, str] | None = None, s3_credentials: tuple[str, str] = ("k", "s"),
          s3_read_only: tuple[str, str] | None = None):
    """Own Redis + own SeaweedFS (auth on with ``s3_credentials``) + a fresh database (own PostgreSQL
    cluster if asked); yields a handle."""
    redis = RedisServer(tmp_path)
    s3 = start_weed(tmp_path / "s3", bucket="faults", credentials=s3_credentials, read_only=s3_read_only)
    pg = PostgresServer(tmp_path) if own_postgres else None
    workers: list[Worker] = []
    try:
        with (postgres_database("cganctl_faults") if pg is None else _nullurl(pg.url)) as url:
            env = base_env(tmp_path / "data")
            env.update(
                FAST,
                CGAN_DATABASE_URL=url,
                CGAN_BROKER_URL=redis.url,
                CGAN_S3_ENDPOINT_URL=s3.endpoint_url,
                CGAN_S3_BUCKET=s3.bucket,
                CGAN_S3_ACCESS_KEY_ID=s3_credentials[0],
                CGAN_S3_SECRET_ACCESS_KEY=s3_credentials[1],
                **(extra or {}),
            )
            cganctl(env, "db", "upgrade", check=True)

            def start_worker(name: str, extra_args: list[str] | None = None) -> Worker:
                worker = Worker(env, name, tmp_path / f"worker-{name}.log", queues="gpu", threads=1, extra_args=extra_args)
                workers.append(worker)
                worker.wait_ready()
                return worker

            yield type("Fleet", (), {"env": env, "redis": redis, "s3": s3, "pg": pg, "start_worker": staticmethod(start_worker), "workers": workers})
            for worker in workers:
                worker.stop(grace_s=10)
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL, grace_s=5)
        redis.stop()
        s3.stop()
        if pg is not None:
            pg.remove()
        from scheduler.db import _engine_for

        _engine_for.cache_clear()


@contextmanager
def _nullurl(url: str):
    yield url


def _table(env):
    from scheduler.runtime import Runtime

    return Runtime(settings_from_env(env))


def _submit(env, count: int = 40, shard_size: int = 10, *extra: str) -> str:
    out = cganctl(env, "submit", "generate", "--count", str(count), "--shard-size", str(shard_size), "--balanced", "--json", *extra, check=True).stdout
    return json.loads(out)["id"]


def _wait_finished(runtime, job_id: str, timeout: float):
    return wait_for(lambda: (lambda j: j if j.finished else None)(runtime.table.get(job_id)), timeout, 0.25, f"job {job_id} to finish")


def _assert_consistent(runtime, job_id: str) -> None:
    """Succeeded; every shard succeeded once as recorded (bytes match sha and size); manifest agrees."""
    job = runtime.table.get(job_id)
    assert job.status == "succeeded", job.error
    shards = runtime.table.shards(job_id)
    manifest = json.loads(runtime.store.get_bytes(job.artifacts["manifest"]))
    assert len(manifest["files"]) == len(shards)
    for shard, entry in zip(shards, manifest["files"], strict=True):
        assert shard.status == "succeeded"
        data = runtime.store.get_bytes(shard.key)
        assert hashlib.sha256(data).hexdigest() == shard.sha256 == entry["sha256"]
        assert len(data) == shard.size == entry["size"]
    assert sorted(runtime.store.list(f"jobs/{job_id}/shards/")) == sorted(s.key for s in shards)
    assert manifest["count"] == sum(s.count for s in shards)


def _report(name: str, seconds: float) -> None:
    print(f"\n[recovery] {name}: {seconds:.1f} s")


# --- the table of issue 7, one test per row ----------------------------------------------------------


def test_worker_sigkill_mid_shard_is_rerun_elsewhere(tmp_path):
    with fleet(tmp_path) as f:
        doomed = f.start_worker("doomed")
        job_id = _submit(f.env, 600, 200)
        rt = _table(f.env)
        running = wait_for(lambda: [s for s in rt.table.shards(job_id) if s.status == "running"], 120, 0.1, "a running shard")
        doomed.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        index = running[0].index
        f.start_worker("rescuer")
        job = _wait_finished(rt, job_id, 180)
        recovery = time.monotonic() - killed_at
        _report("worker SIGKILL mid-shard -> job succeeded", recovery)
        _assert_consistent(rt, job_id)
        shard = rt.table.shards(job_id)[index]
        assert shard.attempts == 2 and shard.worker.startswith("rescuer@"), shard
        assert recovery < RECOVERY_BOUND_S + 30, recovery  # + the rescuer's start-up and the remaining shards
        assert job.status == "succeeded"


def test_a_cold_shutdown_of_a_solo_worker_leaves_its_work_to_another(tmp_path):
    """A second Ctrl-C or a SIGQUIT is Celery's cold shutdown. Under --pool solo its handler raises into the running
    task (NotImplementedError: the solo pool cannot kill a job); that failed the job for good, on its first attempt.
    Now the task records nothing: its lease runs out, another worker takes the work back, a train job from its
    last checkpoint (tests/test_fleet.py checks the resume), and both jobs succeed (one more attempt each)."""
    from harness.datasets import tiny_image_folder

    with fleet(tmp_path) as f:
        rt = _table(f.env)
        data = tiny_image_folder(Path(f.env["CGAN_DATA_DIR"]) / "datasets" / "tiny")
        for kind in ("train", "generate"):
            doomed = f.start_worker(f"doomed-{kind}")
            if kind == "train":
                out = cganctl(f.env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "600", "--batch-size", "8",
                              "--checkpoint-every", "20", "--json", check=True).stdout
                job_id = json.loads(out)["id"]
                wait_for(lambda j=job_id: rt.store.exists(f"jobs/{j}/checkpoints/latest.json"), 120, 0.1, "a checkpoint")
            else:
                job_id = _submit(f.env, 4000, 2000)
                wait_for(lambda j=job_id: [s for s in rt.table.shards(j) if s.status == "running"], 120, 0.05, "a running shard")
            doomed.process.send_signal(signal.SIGQUIT)
            doomed.process.wait(timeout=60)
            log = doomed.log.read_text(errors="replace")
            assert "the worker is stopping (cold shutdown; NotImplementedError)" in log, doomed.log_tail()
            job = rt.table.get(job_id)
            assert job.status == "running" and job.attempts == 1 and not job.error, job
            stopped_at = time.monotonic()
            f.start_worker(f"rescuer-{kind}")
            job = _wait_finished(rt, job_id, 240)
            _report(f"cold shutdown (SIGQUIT) of a solo worker mid-{kind} -> job succeeded", time.monotonic() - stopped_at)
            assert job.status == "succeeded", job.error
            if kind == "train":
                assert job.attempts == 2 and job.worker.startswith("rescuer-train@"), job
            else:
                _assert_consistent(rt, job_id)
                assert max(s.attempts for s in rt.table.shards(job_id)) == 2


def test_redis_restart_without_persistence_recovers(tmp_path):
    with fleet(tmp_path) as f:
        f.start_worker("w1")
        job_id = _submit(f.env, 600, 100)
        f.redis.stop()  # every queued message is gone
        f.redis.start()
        restarted = time.monotonic()
        rt = _table(f.env)
        _wait_finished(rt, job_id, 180)
        recovery = time.monotonic() - restarted
        _report("Redis restarted empty -> job succeeded", recovery)
        _assert_consistent(rt, job_id)
        assert recovery < RECOVERY_BOUND_S + 30, recovery


def test_status_answers_within_seconds_when_redis_hangs(tmp_path):
    """A Redis that accepts connections and never answers (SIGSTOP): `status` reports the broker down
    (exit 3) within seconds instead of hanging, which is when an operator needs it."""
    with fleet(tmp_path) as f:
        f.redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            status = cganctl(f.env, "status", timeout=60)
            took = time.monotonic() - started
        finally:
            f.redis.process.send_signal(signal.SIGCONT)
        _report("Redis frozen -> status answered", took)
        assert status.returncode == 3 and "Timeout" in status.stdout and "workers: unknown (the broker did not answer)" in status.stdout, status.stdout
        assert took < 20, took


def test_metrics_and_dashboard_answer_within_seconds_when_postgres_hangs(tmp_path):
    """A PostgreSQL that holds its connections and never answers (every process SIGSTOPped): the control-plane
    scrape answers within seconds with cganctl_service_up{service="database"} 0 and the dashboard with an error
    page (both hung for minutes on a pooled connection: the scrape never answered, so CganctlServiceDown could not
    fire); once it answers again they read it again."""
    import urllib.error
    import urllib.request

    def get(url: str) -> tuple[int, str, float]:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.status, response.read().decode(), time.monotonic() - started
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), time.monotonic() - started

    with fleet(tmp_path, own_postgres=True) as f:
        metrics_port, ui_port = _free_port(), _free_port()
        servers = [
            subprocess.Popen([*cganctl_command(), "metrics", "--port", str(metrics_port), "--addr", "127.0.0.1"], env=f.env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([*cganctl_command(), "ui", "--port", str(ui_port)], env=f.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        try:
            scrape, page = f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{ui_port}/"
            wait_for(lambda: _answers(scrape) and _answers(page), 60, 0.5, "metrics and dashboard up")
            assert 'cganctl_service_up{service="database"} 1.0' in get(scrape)[1] and get(page)[0] == 200  # a pool would hold these
            f.pg.signal(signal.SIGSTOP)
            try:
                _, text, took = get(scrape)
                code, _, page_took = get(page)
            finally:
                f.pg.signal(signal.SIGCONT)
            _report("PostgreSQL frozen -> scrape answered", took)
            _report("PostgreSQL frozen -> dashboard answered", page_took)
            assert 'cganctl_service_up{service="database"} 0.0' in text and took < 10, (took, text[-500:])
            assert code >= 500 and page_took < 30, (code, page_took)
            wait_for(lambda: 'cganctl_service_up{service="database"} 1.0' in get(scrape)[1], 60, 1, "the database read again")
            assert get(page)[0] == 200
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=30)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except Exception:
        return False


def _postgres_outage(f, seconds: float):
    """Stop the fleet's own PostgreSQL for ``seconds``, start it again; returns when it was back and a fresh table."""
    from scheduler.db import _engine_for

    f.pg.stop()
    time.sleep(seconds)
    f.pg.start()
    back = time.monotonic()
    _engine_for.cache_clear()
    return back, _table(f.env)


def test_training_goes_on_through_a_database_outage(tmp_path):
    """PostgreSQL stopped for 20 s mid-training: progress and cancel checks wait for it and the steps go on (the
    first failed progress write ended the task: it went back to its last checkpoint and spent an attempt). The
    delivery that started the job finishes it, on its first attempt, without a retry. (Its lease may lapse during
    the outage: a reconciler that reads the table before the heartbeat renews it takes the job back and sends it
    again; the heartbeat makes it running again, and that delivery finds it busy, then done.)"""
    from harness.datasets import tiny_image_folder

    with fleet(tmp_path, own_postgres=True) as f:
        worker = f.start_worker("w1")
        data = tiny_image_folder(Path(f.env["CGAN_DATA_DIR"]) / "datasets" / "tiny")
        out = cganctl(f.env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "1500", "--batch-size", "8",
                      "--checkpoint-every", "5000", "--json", check=True).stdout
        job_id = json.loads(out)["id"]
        rt = _table(f.env)
        wait_for(lambda: rt.table.get(job_id).progress_done >= 50, 180, 0.2, "training under way")
        before = rt.table.get(job_id).progress_done
        back, rt = _postgres_outage(f, 20)
        job = _wait_finished(rt, job_id, 300)
        _report("PostgreSQL down 20 s mid-training -> job succeeded (after it came back)", time.monotonic() - back)
        assert job.status == "succeeded" and job.attempts == 1, (job, worker.log_tail())
        log = worker.log.read_text(errors="replace")
        assert "the work goes on" in log and "the job table answers again" in log, worker.log_tail()
        assert "retry 1 in" not in log and before < 1500, worker.log_tail()
        assert log.count(": 'ok'") == 1, worker.log_tail()  # one delivery trained; a second one, if sent, found it busy or done


def test_postgres_down_20s_recovers(tmp_path):
    with fleet(tmp_path, own_postgres=True) as f:
        f.start_worker("w1")
        job_id = _submit(f.env, 600, 200)
        rt = _table(f.env)
        wait_for(lambda: any(s.status == "running" for s in rt.table.shards(job_id)), 120, 0.1, "a running shard")
        back, rt = _postgres_outage(f, 20)
        _wait_finished(rt, job_id, 240)
        recovery = time.monotonic() - back
        _report("PostgreSQL down 20 s -> job succeeded (after it came back)", recovery)
        _assert_consistent(rt, job_id)
        assert recovery < RECOVERY_BOUND_S + 30, recovery


def test_s3_outage_is_survived_without_regenerating(tmp_path):
    import urllib.request

    with fleet(tmp_path) as f:
        port = _free_port()
        f.start_worker("w1", ["--metrics-port", str(port), "--metrics-addr", "127.0.0.1"])
        job_id = _submit(f.env, 600, 200)
        rt = _table(f.env)
        wait_for(lambda: any(s.status == "running" for s in rt.table.shards(job_id)), 120, 0.1, "a running shard")
        f.s3.process.terminate()
        f.s3.process.wait(30)
        time.sleep(S3_OUTAGE_S)
        _restart_weed(f.s3)
        back = time.monotonic()
        job = _wait_finished(rt, job_id, 600)
        recovery = time.monotonic() - back
        _report(f"S3 down {S3_OUTAGE_S:.0f} s -> job succeeded after S3 came back", recovery)
        assert job.status == "succeeded", job.error
        _assert_consistent(rt, job_id)
        # the upload was retried with the bytes already made: one claim per shard, no regeneration
        assert all(s.attempts == 1 for s in rt.table.shards(job_id))
        # and counted where an operator looks (the worker's /metrics; alert CganctlTasksRetrying)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        retried = next(line for line in text.splitlines() if line.startswith('cganctl_worker_upload_retries_total{kind="generate"}'))
        assert float(retried.split()[-1]) >= 1, retried


def test_submit_killed_after_the_row_commits_is_reconciled(tmp_path):
    with fleet(tmp_path) as f:
        f.start_worker("w1")
        # a real `submit` process that dies (SIGKILL) after the row committed and one shard message was sent
        script = textwrap.dedent(
            """
            import os, signal
            from scheduler.service import Service
            from scheduler.submission import GenerateRequest
            service = Service()
            dispatcher = service.lean.dispatcher if service.lean else service.dispatcher  # the lean path on this fleet
            real_enqueue = dispatcher.enqueue
            def enqueue(job, n):
                print(job.id, flush=True)
                real_enqueue(job, 1)  # shard 0's message only
                os.kill(os.getpid(), signal.SIGKILL)
            dispatcher.enqueue = enqueue
            service.submit(service.spec_for(GenerateRequest(count=40, shard_size=10, balanced=True)))
            """
        )
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", script], env=f.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == -signal.SIGKILL, result.stderr
        job_id = result.stdout.split()[0]
        rt = _table(f.env)
        _wait_finished(rt, job_id, 120)
        recovery = time.monotonic() - started
        _report("submit killed after the row committed -> job succeeded", recovery)
        _assert_consistent(rt, job_id)
        assert recovery < RECOVERY_BOUND_S, recovery


def test_worker_killed_while_writing_the_manifest_is_finalised(tmp_path):
    with fleet(tmp_path) as f:
        # a real process runs every shard and is SIGKILLed where the last one would write the manifest
        script = textwrap.dedent(
            """
            import os, signal
            from scheduler.service import Service
            from scheduler.submission import GenerateRequest
            from worker import execute, generate_job
            service = Service()
            service.dispatcher.enqueue = lambda job, n: None
            job = service.submit(service.spec_for(GenerateRequest(count=40, shard_size=10, balanced=True)))
            print(job.id, flush=True)
            def dies_at_the_manifest(ctx, spec):
                if all(s.status == "succeeded" for s in ctx.table.shards(ctx.job.id)):
                    os.kill(os.getpid(), signal.SIGKILL)
                return False
            generate_job.finalize_if_complete = dies_at_the_manifest
            for index in range(4):
                execute.run_shard(service.runtime, job.id, index)
            """
        )
        result = subprocess.run([sys.executable, "-c", script], env=f.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        killed = time.monotonic()
        job_id = result.stdout.split()[0]
        rt = _table(f.env)
        assert rt.table.get(job_id).status == "running"
        assert all(s.status == "succeeded" for s in rt.table.shards(job_id))
        f.start_worker("w1")
        _wait_finished(rt, job_id, 120)
        _report("killed while writing the manifest -> manifest written by the reconciler", time.monotonic() - killed)
        _assert_consistent(rt, job_id)


def test_cancel_generate_job_leaves_final_shards_and_no_objects(tmp_path):
    with fleet(tmp_path) as f:
        f.start_worker("w1")
        job_id = _submit(f.env, 2000, 200)
        rt = _table(f.env)
        wait_for(lambda: sum(s.status == "succeeded" for s in rt.table.shards(job_id)) >= 2, 180, 0.2, "two shards")
        asked = time.monotonic()
        cganctl(f.env, "jobs", "cancel", job_id, check=True)
        job = _wait_finished(rt, job_id, 60)
        assert job.status == "cancelled"
        shards = wait_for(
            lambda: (lambda s: s if all(x.status in ("succeeded", "failed", "cancelled") for x in s) else None)(rt.table.shards(job_id)),
            30, 0.2, "final shard rows",
        )
        wait_for(lambda: not list(rt.store.list(f"jobs/{job_id}/shards/")), 30, 0.2, "shard objects deleted")
        _report("cancel of a running generate job -> cancelled, shards final, objects deleted", time.monotonic() - asked)
        assert not any(s.status in ("pending", "running") for s in shards)
        purge = cganctl(f.env, "jobs", "purge", job_id, check=True)
        assert "deleted" in purge.stdout and not list(rt.store.list(f"jobs/{job_id}/"))


def test_worker_gone_cancel_and_retry_work(tmp_path):
    with fleet(tmp_path) as f:
        doomed = f.start_worker("doomed")
        first = _submit(f.env, 1500, 500)
        rt = _table(f.env)
        wait_for(lambda: any(s.status == "running" for s in rt.table.shards(first)), 120, 0.1, "a running shard")
        refused = cganctl(f.env, "jobs", "retry", first)
        assert refused.returncode == 2 and "alive" in refused.stderr, refused.stderr
        doomed.stop(signal.SIGKILL)
        time.sleep(float(FAST.get("CGAN_LEASE_TIMEOUT", 45)) + 1)
        # no worker left to reconcile: status names the stranded work and says what to do
        status = cganctl(f.env, "status")
        assert status.returncode == 0 and "workers: none answered\n" in status.stdout and "busy" not in status.stdout, status.stdout
        assert f"warning: job {first[:12]} shard " in status.stdout and "its lease ran out" in status.stdout and "start one" in status.stdout
        expired = json.loads(cganctl(f.env, "status", "--json", check=True).stdout)["expired"]
        assert expired and all(row["job"] == first and row["worker"].startswith("doomed@") and row["silent_s"] >= 5 for row in expired)
        # no worker at all: cancel takes effect at once, retry of the cancelled job is a new job
        assert "cancelled" in cganctl(f.env, "jobs", "cancel", first, check=True).stdout
        assert rt.table.get(first).status == "cancelled"
        assert all(s.status in ("succeeded", "failed", "cancelled") for s in rt.table.shards(first))
        retried = json.loads(cganctl(f.env, "jobs", "retry", first, "--json", check=True).stdout)
        f.start_worker("w2")
        _wait_finished(rt, retried["id"], 180)
        _assert_consistent(rt, retried["id"])


def test_embedded_cli_killed_then_retry_cancel_and_watch_work(tmp_path):
    env = base_env(tmp_path / "data")
    env.update(FAST)
    cganctl(env, "db", "upgrade", check=True)
    rt = _table(env)

    def killed_submit(env=env) -> str:
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "submit", "generate", "--count", "2000", "--shard-size", "500", "--balanced", "--json"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        try:
            job = wait_for(lambda: (lambda j: j[0] if j and j[0].status == "running" else None)(_jobs(rt)), 120, 0.1, "embedded job running")
        finally:
            process.kill()
            process.wait()
        return job.id

    job_id = killed_submit()
    killed = time.monotonic()
    # jobs watch ends (the sweep marks it failed once its lease ran out)
    watch = cganctl(env, "jobs", "watch", job_id, timeout=120)
    noticed = time.monotonic() - killed
    _report("embedded CLI killed -> job failed, noticed by `jobs watch`", noticed)
    job = rt.table.get(job_id)
    assert job.status == "failed" and "process running it stopped" in job.error, job
    assert watch.returncode != 0 or "failed" in (watch.stdout + watch.stderr)
    assert all(s.status in ("succeeded", "failed", "cancelled") for s in rt.table.shards(job_id))
    cganctl(env, "jobs", "retry", job_id, timeout=300, check=True)  # embedded: runs the new job here
    new = _jobs(rt)[0]
    assert new.retry_of == job_id and new.status == "succeeded", new

    second = killed_submit()
    time.sleep(float(FAST.get("CGAN_LEASE_TIMEOUT", 45)) + 1)
    cancel = cganctl(env, "jobs", "cancel", second)
    assert rt.table.get(second).status in ("cancelled", "failed"), cancel.stdout + cancel.stderr

    # with the default 45 s lease, still live in its row: the process of this host that ran it is gone, so
    # a retry at once is taken (it was refused: "its worker is alive (lease renewed)")
    slow = {k: v for k, v in env.items() if k not in FAST}
    third = killed_submit(slow)
    assert rt.table.live_leases(third)
    retried = cganctl(slow, "jobs", "retry", third, "--json", timeout=300)
    assert retried.returncode == 0, retried.stderr
    assert "process running it stopped" in rt.table.get(third).error and json.loads(retried.stdout)["status"] == "succeeded"


def _jobs(rt):
    return rt.table.list(limit=1)


def test_tiny_truncation_and_unreachable_confidence_fail_fast(tmp_path):
    env = base_env(tmp_path / "data")
    refused = cganctl(env, "submit", "generate", "--count", "10", "--balanced", "--truncation", "1e-12")
    assert refused.returncode == 2 and refused.stderr.startswith("error:") and "0.05" in refused.stderr
    assert "Traceback" not in refused.stderr
    import torch

    from cganmodel.gan import GANConfig, build_generator
    from cganmodel.nets.classifier import build_classifier
    from cganmodel.sampling import GenerationError, generate, sample_noise

    started = time.monotonic()
    with pytest.raises(GenerationError, match="truncation 1e-12 is too small"):
        sample_noise(250, 128, torch.Generator().manual_seed(0), 1e-12)
    G = build_generator(GANConfig(preset="mlp", num_classes=10))
    with pytest.raises(GenerationError, match="could not reach min_confidence"):
        generate(G, [0] * 10, 0, classifier=build_classifier(10), min_confidence=0.999)
    took = time.monotonic() - started
    _report("tiny truncation / unreachable min-confidence -> GenerationError", took)
    assert took < 30


def test_deadline_stops_a_task_even_with_pool_solo(tmp_path):
    with fleet(tmp_path, extra={"CGAN_TASK_SOFT_TIME_LIMIT": "1"}) as f:
        f.start_worker("w1")
        job_id = _submit(f.env, 2000, 2000)
        rt = _table(f.env)
        job = _wait_finished(rt, job_id, 120)
        assert job.status == "failed" and "deadline" in job.error, job
        assert all(s.status in ("failed", "cancelled") for s in rt.table.shards(job_id))


def test_a_hung_task_past_the_time_limit_goes_to_another_worker(tmp_path):
    """A task whose thread blocks (here: an S3 server that accepts connections and never answers, frozen
    with SIGSTOP) under --pool solo, where nothing kills it: past CGAN_TASK_TIME_LIMIT its heartbeat stops
    renewing, the lease runs out and the shard runs again on another worker. When the hung delivery wakes
    it writes nothing: the shard is recorded once, by the worker that holds it."""
    with fleet(tmp_path, extra={"CGAN_TASK_TIME_LIMIT": "8", "CGAN_TASK_SOFT_TIME_LIMIT": "7"}) as f:  # soft below hard
        hung = f.start_worker("hung")
        rt = _table(f.env)
        f.s3.process.send_signal(signal.SIGSTOP)
        try:
            job_id = _submit(f.env, 10, 10)
            first = wait_for(lambda: [s for s in rt.table.shards(job_id) if s.status == "running"], 60, 0.1, "a running shard")[0]
            claimed = time.monotonic()
            # its upload blocks; past 8 s the renewals stop, the lease (5 s) runs out, the reconciler re-sends it
            wait_for(lambda: rt.table.shards(job_id)[0].status == "pending", 60, 0.2, "the hung shard taken back")
            taken_back = time.monotonic() - claimed
            assert "past the task time limit of 8 s" in hung.log.read_text(errors="replace"), hung.log_tail()
            f.start_worker("rescuer")  # claims the re-sent shard; its upload waits for S3 too
            wait_for(lambda: (lambda s: s.status == "running" and s.worker.startswith("rescuer@"))(rt.table.shards(job_id)[0]), 60, 0.1, "rescuer's claim")
        finally:
            f.s3.process.send_signal(signal.SIGCONT)  # both uploads go through now
        job = _wait_finished(rt, job_id, 120)
        _report(f"hung task (limit 8 s, lease 5 s) -> shard taken back {taken_back:.1f} s after its claim; job succeeded", time.monotonic() - claimed)
        _assert_consistent(rt, job_id)
        assert job.status == "succeeded"
        shard = rt.table.shards(job_id)[0]
        assert first.index == 0 and shard.attempts == 2 and shard.worker.startswith("rescuer@"), shard
        assert 8 <= taken_back < 8 + 5 + 2 + 10, taken_back  # limit + lease + one reconcile interval (+ slack)
        wait_for(lambda: "this delivery lost its lease" in hung.log.read_text(errors="replace"), 30, 0.2, "the hung delivery to wake and stop")


def test_a_worker_whose_s3_writes_are_refused_fails_the_job_at_once(tmp_path):
    """One host with a key that may read the bucket but not write it (a worker with a wrong secret does not
    even start: tests/test_fleet.py): its uploads are refused (AccessDenied). Not an outage, so not retried:
    the job fails at once with the reason and the settings to fix; the secret is never logged."""
    with fleet(tmp_path, s3_credentials=("cganKEY", "right-secret-123"), s3_read_only=("readerKEY", "reader-secret-456")) as f:
        stale = Worker(dict(f.env, CGAN_S3_ACCESS_KEY_ID="readerKEY", CGAN_S3_SECRET_ACCESS_KEY="reader-secret-456"), "stale",
                       tmp_path / "worker-stale.log", queues="gpu", threads=1)
        f.workers.append(stale)
        stale.wait_ready()
        rt = _table(f.env)
        started = time.monotonic()
        job_id = _submit(f.env, 20, 10)  # the submitting host may write
        job = _wait_finished(rt, job_id, 120)
        took = time.monotonic() - started
        _report("S3 writes refused on the worker -> job failed", took)
        assert job.status == "failed" and "AccessDenied" in job.error and "CGAN_S3_SECRET_ACCESS_KEY" in job.error, job.error
        assert took < 60, took  # CGAN_TRANSIENT_RETRY_BUDGET is 600 s: a refusal is not retried
        assert all(s.status in ("failed", "cancelled") and s.attempts <= 1 for s in rt.table.shards(job_id))
        assert not list(rt.store.list(f"jobs/{job_id}/"))
        stale.stop()
        log = stale.log.read_text(errors="replace")
        assert "reader-secret-456" not in log and "Traceback" not in log and "(AccessDenied): the credentials" in log, stale.log_tail()


def test_s3_down_past_the_retry_budget_fails_the_job_once_with_the_reason(tmp_path):
    """S3 gone for good: the upload is retried in the task (the bytes are kept) for CGAN_TRANSIENT_RETRY_BUDGET,
    with warnings in the worker's log, then the job fails saying so; no Celery retry regenerates the shard
    to spend a second budget."""
    with fleet(tmp_path, extra={"CGAN_TRANSIENT_RETRY_BUDGET": "8"}) as f:
        worker = f.start_worker("w1")
        rt = _table(f.env)
        f.s3.stop()
        started = time.monotonic()
        job_id = _submit(f.env, 10, 10)
        job = _wait_finished(rt, job_id, 120)
        took = time.monotonic() - started
        _report("S3 down past an 8 s retry budget -> job failed", took)
        assert job.status == "failed" and "CGAN_TRANSIENT_RETRY_BUDGET is 8 s" in job.error, job.error
        assert took < 8 + 20, took
        log = worker.log.read_text(errors="replace")
        assert "retrying the upload" in log and " retry 1 in " not in log, worker.log_tail()
        assert [s.attempts for s in rt.table.shards(job_id)] == [1]
