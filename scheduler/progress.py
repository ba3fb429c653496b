"""Following a job with a rich progress bar (done / total, rate, ETA) until it ends."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .records import JobRecord
from .textsafe import markup_safe
from .views import unserved_line


def _describe(job: JobRecord) -> str:
    info = job.progress_info or {}
    extra = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items() if k in ("stage", "d_loss", "g_loss", "loss", "images_per_s"))
    return markup_safe(f"{job.kind} {job.id[:8]} {job.status}" + (f" {extra}" if extra else ""), one_line=True)


def follow_job(service, job_id: str, *, quiet: bool = False) -> JobRecord:
    console = Console(stderr=True)

    def unserved(queue: str) -> None:
        console.print(markup_safe(unserved_line(queue)), highlight=False, soft_wrap=True)

    if quiet:
        return service.wait(job_id, on_unserved=unserved)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=None, unit="")
        job = None
        for job in service.follow(job_id, on_unserved=unserved):
            bar.update(task, description=_describe(job), completed=job.progress_done, total=job.progress_total, unit=job.progress_unit or "")
    assert job is not None
    return job
