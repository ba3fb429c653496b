"""Human-readable output of the CLI (rich tables). JSON output goes through ``to_dict``/``job_details``."""
from __future__ import annotations

from collections import Counter

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .records import JobRecord
from .textsafe import markup_safe, plain, plural, text

console = Console()


def _ts(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _progress(job: JobRecord) -> str:
    if job.progress_total:
        return f"{job.progress_done}/{job.progress_total} {job.progress_unit or ''}".strip()
    return f"{job.progress_done} {job.progress_unit or ''}".strip()


def print_job_list(jobs: list[JobRecord]) -> None:
    table = Table("id", "kind", "status", "progress", "queue", "created UTC", "worker", box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for column in table.columns[:6]:
        column.no_wrap = True
    for job in jobs:
        created = job.created_at.strftime("%m-%d %H:%M")
        table.add_row(*(text(v) for v in (job.id[:12], job.kind, job.status, _progress(job), job.queue, created, job.worker or "-")))
    console.print(table)


def job_details(service, job: JobRecord) -> dict:
    data = job.to_dict()
    if job.kind == "generate":
        shards = service.table.shards(job.id)
        data["shards"] = [s.to_dict() for s in shards]
    return data


def print_job(service, job: JobRecord) -> None:
    import json

    info = Table.grid(padding=(0, 2))
    rows = [
        ("id", job.id),
        ("kind", job.kind),
        ("status", job.status + (" (cancel requested)" if job.cancel_requested and not job.finished else "")),
        ("queue / priority", f"{job.queue} / {job.priority}"),
        ("progress", _progress(job)),
        ("created", _ts(job.created_at)),
        ("started", _ts(job.started_at)),
        ("finished", _ts(job.finished_at)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("worker", job.worker or "-"),
        ("retry of", job.retry_of or "-"),
    ]
    retries = service.table.retries_of(job.id)
    if retries:
        rows.append(("retried as", ", ".join(f"{rid} ({rstatus})" for rid, rstatus in retries)))
    if job.error:
        rows.append(("error", job.error))
    if job.status == "running" and not service.runtime.settings.embedded:
        stranded = service.table.expired_leases(limit=1000, job_id=job.id)
        if stranded:  # its worker died or hung: say so here too, not only in `cganctl status`
            rows.append(("lease", expired_line(stranded[0], any_worker=None).removeprefix("warning: ")
                         + (f" ({len(stranded)} shards)" if len(stranded) > 1 else "")))
    for key, value in rows:
        info.add_row(f"[bold]{key}[/bold]", text(value, one_line=False))
    console.print(info)
    console.print("[bold]spec[/bold]")
    console.print_json(json.dumps(job.spec))
    if job.progress_info:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in job.progress_info.items())
        console.print("[bold]last progress[/bold] " + markup_safe(shown), highlight=False, soft_wrap=True)
    if job.kind == "generate":
        shards = service.table.shards(job.id)
        states = Counter(s.status for s in shards)
        spread = Counter(s.worker for s in shards if s.worker)
        console.print(f"[bold]shards[/bold] {len(shards)}: " + markup_safe(", ".join(f"{n} {s}" for s, n in sorted(states.items()))))
        if spread:
            console.print("[bold]shards per worker[/bold] " + markup_safe(", ".join(f"{w}: {n}" for w, n in sorted(spread.items()))))
    if job.metrics:
        per_class = job.metrics.get("per_class")
        summary = {k: v for k, v in job.metrics.items() if k != "per_class"}
        console.print("[bold]metrics[/bold]")
        console.print_json(json.dumps(summary, default=str))
        print_scores(job.metrics)
        print_usefulness(job.metrics)
        if per_class:
            print_per_class(per_class)
    if job.artifacts:
        console.print("[bold]artifacts[/bold]")
        for name, value in job.artifacts.items():
            if isinstance(value, list):
                console.print(markup_safe(f"  {name}: {len(value)} objects"), highlight=False, soft_wrap=True)
            else:
                console.print(markup_safe(f"  {name}: {value}"), highlight=False, soft_wrap=True)


# The per-class columns an evaluate job writes (worker/evaluate_job.py: _per_class), in this order: a short
# header and whether the value is a fraction (shown in percent, else a FID with one decimal). Short, so that
# all of them fit in 80 columns; a column not named here keeps its key and shows 4 significant digits.
PER_CLASS_COLUMNS = {
    "label_accuracy": ("label\nacc. %", True),
    "classifier_intra_fid": ("intra-FID\nclassif.", False),
    "inception_intra_fid": ("intra-FID\nIncep.", False),
    "cas_accuracy": ("CAS\n%", True),
    "augmentation_baseline": ("aug. real\n%", True),
    "augmentation_augmented": ("+ gen.\n%", True),
    "augmentation_gain": ("gain\npoints", True),
}


def print_per_class(per_class: dict[str, dict]) -> None:
    present = {k for row in per_class.values() for k in row}
    if not present:  # rows without a column: nothing to show
        return
    columns = [c for c in PER_CLASS_COLUMNS if c in present] + sorted(present - set(PER_CLASS_COLUMNS))
    headers = (markup_safe(PER_CLASS_COLUMNS.get(c, (c,))[0]) for c in columns)
    table = Table("class", *headers, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)

    def cell(column: str, value: object) -> str:
        if not isinstance(value, float):
            return "-" if value is None else str(value)
        if column not in PER_CLASS_COLUMNS:
            return f"{value:.4g}"
        return f"{value * 100:.1f}" if PER_CLASS_COLUMNS[column][1] else f"{value:.1f}"

    for name, row in per_class.items():
        table.add_row(text(name), *(text(cell(c, row.get(c))) for c in columns))
    console.print(table)


def print_outcome(service, job: JobRecord) -> None:
    """The last lines of ``--wait``: how the job ended and where its results are."""
    duration = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    took = f" in {duration:.1f} s" if duration is not None else ""
    typer.echo(f"job {job.id} {job.status}{took}")
    if job.status != "succeeded":
        if job.error:
            typer.echo(f"error: {plain(job.error)}", err=True)
        return
    store = service.runtime.store
    artifacts = job.artifacts or {}
    metrics = job.metrics or {}
    if job.kind == "generate":
        rate = f" ({job.progress_done / duration:.0f} images/s)" if duration else ""
        typer.echo(f"{metrics['images']} images{rate} written to {artifacts['location']}")
        typer.echo(f"manifest: {store.location(artifacts['manifest'])}")
        typer.echo(f"contact sheet: {store.location(artifacts['contact_sheet'])}")
        typer.echo(f"fetch them: cganctl results download {job.id} --to DIR [--layout imagefolder]")
    else:
        for name, key in artifacts.items():
            if isinstance(key, str):
                typer.echo(f"{name}: {store.location(key)}")
        if job.kind == "train" and isinstance(metrics.get("model"), str):
            from cganmodel.presets import PRESETS

            preset = PRESETS.get(str(job.spec.get("preset")))
            flag = "--classifier" if preset is not None and preset.kind == "classifier" else "--model"
            typer.echo(plain(f"registered as {metrics['model']}: use it with {flag} {metrics['model']}"))
            test = metrics.get("test")
            if isinstance(test, dict) and isinstance(test.get("accuracy"), float):
                typer.echo(f"test accuracy {test['accuracy']:.1%} on the dataset's {test.get('count', '?')} test images")
        if job.metrics:
            print_scores(job.metrics)
            print_usefulness(job.metrics)
        if job.metrics and job.metrics.get("per_class"):
            print_per_class(job.metrics["per_class"])


def print_scores(metrics: dict) -> None:
    """One line of an evaluate job's headline figures, with the sample and reference counts they stand on."""
    protocol = metrics.get("protocol") or {}
    parts = []
    if isinstance(metrics.get("label_accuracy"), float):
        parts.append(f"label accuracy {metrics['label_accuracy']:.1%} ({metrics.get('classifier', '?')})")
    for space, name in (("inception", "Inception FID"), ("classifier", "classifier FID")):
        if isinstance(metrics.get(f"{space}_fid"), float):
            parts.append(f"{name} {metrics[f'{space}_fid']:.2f}")
    if not parts:
        return
    counts = f"{protocol.get('num_samples', '?')} samples vs {protocol.get('reference_images', '?')} reference images"
    fewest = min((n for n in (protocol.get("num_samples"), protocol.get("reference_images")) if isinstance(n, int)), default=None)
    if isinstance(metrics.get("inception_fid"), float) and fewest is not None and fewest < 2048:
        # 2048 Inception features: with fewer samples the covariance is singular and FID is biased upwards
        counts += "; Inception FID under 2,048 samples a side is biased high: compare only at equal counts"
    console.print("[bold]scores[/bold] " + markup_safe(f"{'; '.join(parts)} ({counts})"), highlight=False, soft_wrap=True)


def print_usefulness(metrics: dict) -> None:
    """One line of the `--downstream` headline figures (the protocols are in the metrics JSON)."""
    if "cas_accuracy" not in metrics:
        return
    space = (metrics.get("prdc_protocol") or {}).get("feature_space", "?")
    console.print(
        f"[bold]usefulness[/bold] CAS {metrics['cas_accuracy']:.2%}; augmentation "
        f"{metrics['augmentation_baseline_accuracy']:.2%} -> {metrics['augmentation_augmented_accuracy']:.2%} "
        f"(gain {100 * metrics['augmentation_gain']:+.2f} points); precision {metrics['precision']:.3f}, recall "
        f"{metrics['recall']:.3f}, density {metrics['density']:.3f}, coverage {metrics['coverage']:.3f} ({space} features)",
        highlight=False,
        soft_wrap=True,
    )


def print_models(records) -> None:
    table = Table("model", "kind", "preset", "classes")
    table.add_column("source", overflow="fold")  # a weights key is long: wrap it, never cut it
    from .model_registry import aliased

    alias = aliased(records)
    for m in records:
        preset = (m.meta.get("config") or {}).get("preset", "-")
        shown = f"{m.ref} = {m.name}" if m.ref in alias else m.ref  # what NAME alone means
        table.add_row(*(text(v) for v in (shown, m.kind, preset, len(m.meta.get("classes", [])), m.job_id or m.weights_key)))
    console.print(table)


def print_datasets(entries) -> None:
    table = Table("dataset", "classes", "images", "bytes", "added UTC")
    table.add_column("source", overflow="fold")
    for e in entries:
        counts = ", ".join(f"{split} {sum(c.values())}" for split, c in e.splits.items())
        table.add_row(*(text(v) for v in (e.name, len(e.classes), counts, e.size, e.added_at[:16].replace("T", " "), e.source)))
    console.print(table)


def print_status(report: dict) -> None:
    table = Table("service", "ok", "detail")
    for name, part in report["services"].items():
        table.add_row(text(name), "yes" if part["ok"] else "[red]NO[/red]", text(part["detail"], one_line=False))
    console.print(table)
    workers = report.get("workers")
    silent = report.get("silent") or []
    if report.get("embedded", workers is None):
        console.print("workers: none needed (embedded default: jobs run in-process)")
    elif workers is None:
        console.print("workers: unknown (the broker did not answer)")
    elif not workers:
        console.print("workers: none answered")
    else:
        wt = Table("worker", "queues", "active tasks")
        for name, w in sorted(workers.items()):
            wt.add_row(text(name), text(", ".join(w["queues"])), text(w["active"]))
        console.print(wt)
    if silent:
        line = f"busy, did not answer (a --pool solo worker answers between tasks): {', '.join(silent)}"
        console.print(markup_safe(line), highlight=False, soft_wrap=True)
    for queue, count in sorted((report.get("unserved") or {}).items()):
        console.print(markup_safe(unserved_line(queue, count, silent)), highlight=False, soft_wrap=True)
    for row in report.get("expired") or []:
        console.print(markup_safe(expired_line(row, any_worker=bool(workers))), highlight=False, soft_wrap=True)
    for action in report.get("abandoned") or []:
        console.print(markup_safe(f"warning: {action}: marked failed"), highlight=False, soft_wrap=True)


def expired_line(row: dict, any_worker: bool | None) -> str:
    """The warning for running work whose worker stopped renewing its lease (crashed, or hung past its time limit)."""
    what = f"job {row['job'][:12]}" + (f" shard {row['shard']}" if row["shard"] is not None else "")
    since = f"no heartbeat for {row['silent_s']:.0f} s" if row.get("silent_s") is not None else "no heartbeat"
    if any_worker is None:  # not asked (jobs show): both cases
        then = "a live worker's reconciler sends it again; if no worker runs, start one (cganctl worker)"
    elif any_worker:
        then = "the reconciler of a live worker sends it again within one reconcile interval"
    else:
        then = "no live worker answered to take it back: start one (cganctl worker)"
    return f"warning: {what} running on {row['worker'] or '?'}: {since}, its lease ran out (the worker is gone or hung); {then}"


def unserved_line(queue: str, count: int | None = None, silent: list[str] | None = None) -> str:
    """The warning for a queue that no live worker consumes (`status`, and `--wait` on a job that stays queued);
    ``silent``: busy workers that did not answer, which may consume it."""
    jobs = "" if count is None else f"{plural(count, 'job')} queued on '{queue}' and "
    line = f"warning: {jobs}no live worker consumes queue '{queue}'; start one with: cganctl worker --queues {queue}"
    if silent:
        line += f" (unless a busy worker that did not answer consumes it: {', '.join(silent)})"
    return line
