"""A worker's Prometheus metrics, served on ``/metrics`` by ``cganctl worker --metrics-port N``.

Every definition lives here; they are fed by Celery signals (task started / finished / retried) and by
one progress hook that :class:`worker.execute.JobContext` calls (images written, train-step times), so
the task bodies do not know about metrics. Labels are bounded: the job kind (train, evaluate,
generate) and a GPU index; never a job id, a model name, a queue the user typed or anything secret.

The counters live in the process that runs the tasks: serve them from a ``--pool solo`` or
``--pool threads`` worker (a prefork child would count in its own memory).
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from celery import signals
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.metrics import listen

from . import context
from .celery_app import TASK_FOR_KIND

KIND_OF_TASK = {name: kind for kind, name in TASK_FOR_KIND.items()}
KINDS = tuple(TASK_FOR_KIND)

TASKS_STARTED = Counter("cganctl_worker_tasks_started", "Tasks this worker started executing.", ["kind"])
TASKS_SUCCEEDED = Counter("cganctl_worker_tasks_succeeded", "Tasks whose job (or shard) ran to success.", ["kind"])
TASKS_FAILED = Counter("cganctl_worker_tasks_failed", "Tasks that failed their job (or shard), or raised.", ["kind"])
TASKS_RETRIED = Counter("cganctl_worker_tasks_retried", "Tasks handed back for a later retry (a service was unreachable).", ["kind"])
UPLOAD_RETRIES = Counter(
    "cganctl_worker_upload_retries", "Uploads tried again within a task, the object store being unavailable (the bytes are kept, not made again).", ["kind"]
)
TASKS_CANCELLED = Counter("cganctl_worker_tasks_cancelled", "Tasks that stopped because their job was cancelled.", ["kind"])
TASKS_SKIPPED = Counter("cganctl_worker_tasks_skipped", "Deliveries not run: the job or shard had already ended or was claimed elsewhere.", ["kind"])
TASKS_RUNNING = Gauge("cganctl_worker_tasks_running", "Tasks executing on this worker now.", ["kind"])
TASK_STARTED_AT = Gauge(
    "cganctl_worker_task_started_timestamp_seconds", "Unix time the running task of this kind started; 0 when none runs.", ["kind"]
)
TASK_SECONDS = Histogram(
    "cganctl_worker_task_duration_seconds", "Wall time of one task, start to end, whatever its outcome.", ["kind"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
)
SHARD_SECONDS = Histogram(
    "cganctl_worker_shard_duration_seconds", "Wall time of one generate shard that succeeded (claim to upload).",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
IMAGES = Counter("cganctl_worker_images_generated", "Images generate shards produced (counted as shards report progress).")
TRAIN_STEP_SECONDS = Histogram(
    "cganctl_worker_train_step_duration_seconds",
    "Seconds per training step: the mean over the steps between two progress reports, observed once per step.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
for _k in KINDS:  # every series exists from the start, at 0
    for _metric in (TASKS_STARTED, TASKS_SUCCEEDED, TASKS_FAILED, TASKS_RETRIED, UPLOAD_RETRIES, TASKS_CANCELLED, TASKS_SKIPPED, TASKS_RUNNING, TASK_STARTED_AT, TASK_SECONDS):
        _metric.labels(_k)

OUTCOME_COUNTER = {"ok": TASKS_SUCCEEDED, "failed": TASKS_FAILED, "cancelled": TASKS_CANCELLED}

_lock = threading.Lock()
_started: dict[str, float] = {}  # task id -> monotonic start
_progress: "weakref.WeakKeyDictionary[Any, tuple[int, float]]" = weakref.WeakKeyDictionary()


def _kind(sender: Any) -> str | None:
    return KIND_OF_TASK.get(getattr(sender, "name", None) or "")


def _on_prerun(sender=None, task_id=None, **_) -> None:
    kind = _kind(sender)
    if kind is None:
        return
    with _lock:
        _started[task_id] = time.monotonic()
    TASKS_STARTED.labels(kind).inc()
    TASKS_RUNNING.labels(kind).inc()
    TASK_STARTED_AT.labels(kind).set(time.time())


def _on_postrun(sender=None, task_id=None, retval=None, state=None, **_) -> None:
    kind = _kind(sender)
    if kind is None:
        return
    with _lock:
        started = _started.pop(task_id, None)
    TASKS_RUNNING.labels(kind).dec()
    TASK_STARTED_AT.labels(kind).set(0)
    elapsed = None if started is None else time.monotonic() - started
    if elapsed is not None:
        TASK_SECONDS.labels(kind).observe(elapsed)
    if state == "RETRY":
        return  # counted by task_retry
    if state != "SUCCESS":
        TASKS_FAILED.labels(kind).inc()
        return
    OUTCOME_COUNTER.get(retval, TASKS_SKIPPED).labels(kind).inc()
    if kind == "generate" and retval == "ok" and elapsed is not None:
        SHARD_SECONDS.observe(elapsed)


def _on_retry(sender=None, **_) -> None:
    kind = _kind(sender)
    if kind is not None:
        TASKS_RETRIED.labels(kind).inc()


def upload_retried(context: Any) -> None:
    """Called by JobContext.put_retrying on every upload try the store did not take."""
    kind = getattr(getattr(context, "job", None), "kind", None)
    if kind in KINDS:
        UPLOAD_RETRIES.labels(kind).inc()


def progress(context: Any, done: int) -> None:
    """Called by JobContext.report on every progress report (before its throttle): images and step times."""
    kind = getattr(getattr(context, "job", None), "kind", None)
    if kind not in ("generate", "train"):
        return
    now = time.monotonic()
    last_done, last_time = _progress.get(context, (0 if kind == "generate" else None, now))
    _progress[context] = (done, now)
    if last_done is None or done <= last_done:
        return
    if kind == "generate":
        IMAGES.inc(done - last_done)
    else:
        steps = done - last_done
        per_step = (now - last_time) / steps
        for _ in range(min(steps, 1000)):
            TRAIN_STEP_SECONDS.observe(per_step)


class GpuCollector(Collector):
    """GPU memory (torch's allocator) and utilisation (NVML, if pynvml is installed), read at scrape time."""

    def collect(self):
        import sys

        torch = sys.modules.get("torch")  # never import torch just to be scraped
        if torch is None or not torch.cuda.is_available():
            return
        allocated = GaugeMetricFamily("cganctl_worker_gpu_memory_allocated_bytes", "Bytes held by tensors on the GPU (torch.cuda.memory_allocated).", labels=["gpu"])
        reserved = GaugeMetricFamily("cganctl_worker_gpu_memory_reserved_bytes", "Bytes reserved by torch's caching allocator (torch.cuda.memory_reserved).", labels=["gpu"])
        for index in range(torch.cuda.device_count()):
            allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
            reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
        yield allocated
        yield reserved
        utilisation = _nvml_utilisation(torch.cuda.device_count())
        if utilisation:
            family = GaugeMetricFamily("cganctl_worker_gpu_utilization_ratio", "Fraction of the last sample period a kernel ran on the GPU (NVML), 0..1.", labels=["gpu"])
            for index, value in utilisation.items():
                family.add_metric([str(index)], value)
            yield family


def _nvml_utilisation(count: int) -> dict[int, float]:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        return {i: pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i)).gpu / 100.0 for i in range(count)}
    except Exception:  # NVML missing or the driver refuses: report nothing rather than fail the scrape
        return {}


_installed = False


def install() -> None:
    """Connect the signal handlers and the GPU collector (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    context.progress_hooks.append(progress)
    context.retry_hooks.append(upload_retried)
    REGISTRY.register(GpuCollector())


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start ``/metrics`` on ``addr:port`` in a daemon thread; a port that cannot be bound is ServiceUnavailable."""
    install()
    listen(port, addr)

