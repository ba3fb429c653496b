"""Following a job with a rich progress bar (done / total, rate, ETA) until it ends."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .records import JobRecord
from .textsafe import markup_safe
from .views import unserved_line

WIDE = 120  # terminal columns from which the bar also shows the latest losses


def _describe(job: JobRecord) -> tuple[str, str]:
    """(what and where it stands, the latest losses/stage): the second goes last, so a narrow terminal
    cuts it before the counts and the times."""
    info = job.progress_info or {}
    extra = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items() if k in ("stage", "d_loss", "g_loss", "loss", "images_per_s"))
    return markup_safe(f"{job.kind} {job.id[:8]} {job.status}", one_line=True), markup_safe(extra, one_line=True)


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
        # the latest losses/stage only where they fit beside the counts and times (rich squeezes every column)
        *((TextColumn("{task.fields[extra]}", markup=False),) if console.width >= WIDE else ()),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = None  # added with the first reading of the job: no blank first frame
        job = None
        for job in service.follow(job_id, on_unserved=unserved):
            head, extra = _describe(job)
            if task is None:
                task = bar.add_task(head, total=job.progress_total, unit=job.progress_unit or "", extra=extra)
            bar.update(task, description=head, extra=extra, completed=job.progress_done, total=job.progress_total, unit=job.progress_unit or "")
    assert job is not None
    return job
