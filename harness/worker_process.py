"""A real `cganctl worker` process (Celery, --pool solo) for the tests and the bench scripts."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """One ``cganctl worker --queues Q --hostname NAME@%h`` process, its log in a file."""

    def __init__(
        self, env: dict[str, str], name: str, log: Path, *, queues: str = "gpu", threads: int | None = None, command: list[str] | None = None,
        cwd: Path | None = None, extra_args: list[str] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self.threads = threads
        worker_env = dict(env)
        if threads is not None:
            worker_env["OMP_NUM_THREADS"] = str(threads)
        self.handle = open(log, "wb")
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "scheduler"]), "worker", "--queues", queues, "--hostname", f"{name}@%h", "--loglevel", "info",
             *(extra_args or [])],
            env=worker_env,
            cwd=cwd or ROOT,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early ({self.process.returncode}):\n{self.log_tail()}")
            if b"ready." in self.log.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 30) -> None:
        """``sig`` (SIGTERM: Celery's warm shutdown), SIGKILL after ``grace_s``; safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.handle.closed:
            self.handle.close()
