"""``cganctl``: a thin Typer CLI over :class:`scheduler.service.Service`.

Start-up stays light: only Typer is imported here at module level; settings, SQLAlchemy, Celery and
(in workers) torch are imported inside the commands that need them.

Exit codes: 0 ok / job succeeded, 1 job failed, 2 bad input, 3 a service is unreachable,
4 job cancelled, 130 interrupted, 141 its output cut short by its reader (`| head`).
"""
from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .submission import EvaluateRequest, GenerateRequest, Request, TrainRequest

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Submit and manage conditional-GAN jobs: train, evaluate, generate.")
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job (validates, writes the job row, enqueues).")
jobs_app = typer.Typer(no_args_is_help=True, help="Inspect and control jobs.")
results_app = typer.Typer(no_args_is_help=True, help="Fetch what jobs wrote.")
models_app = typer.Typer(no_args_is_help=True, help="Models that generate and evaluate jobs can use.")
db_app = typer.Typer(no_args_is_help=True, help="The job table's schema.")
datasets_app = typer.Typer(no_args_is_help=True, help="Datasets registered in the project's object store (--dataset/--reference NAME).")
app.add_typer(submit_app, name="submit")
app.add_typer(jobs_app, name="jobs")
app.add_typer(results_app, name="results")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(datasets_app, name="datasets")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"cganctl {version('cganctl')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("cganctl (not installed: run from a source tree)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass  # the options of `cganctl` itself (its help is the Typer app's)


EXIT_FOR_STATUS = {"succeeded": 0, "failed": 1, "cancelled": 4}
EXIT_PIPE_CLOSED = 141  # stdout closed by its reader (`| head`): 128 + SIGPIPE, as a shell reports it


class Layout(str, Enum):
    webdataset = "webdataset"
    imagefolder = "imagefolder"


class Pool(str, Enum):  # the Celery pools a worker runs under (README, "GPU workers run --pool solo")
    solo = "solo"
    threads = "threads"
    prefork = "prefork"


QueueOpt = Annotated[Optional[str], typer.Option("--queue", help="Celery queue (default: the kind's CGAN_ROUTES entry, else CGAN_DEFAULT_QUEUE='gpu').")]
PriorityOpt = Annotated[int, typer.Option("--priority", help="0 (lowest) to 9 (highest).")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends; the exit code says how.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(message: str, code: int) -> None:
    from .textsafe import plain

    typer.echo(f"error: {_clip(plain(message))}", err=True)
    raise typer.Exit(code)


def _service():
    from .service import Service

    return Service()


def _emit_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _submit(request: Request, *, queue: str | None, priority: int, wait: bool, as_json: bool) -> None:
    service = _service()
    spec = service.spec_for(request)
    job = service.submit(spec, queue=queue, priority=priority)
    embedded = service.runtime.settings.embedded
    if not as_json:
        where = "running in-process (embedded default)" if embedded else f"queued on '{job.queue}'"
        typer.echo(f"job {job.id} {job.kind} {where}")
        if job.kind == "generate":  # the plan, per class: what --fill-to or --balanced worked out
            from .textsafe import plural

            plan = job.parsed_spec()
            asked = [(name, n) for name, n in plan.counts.items() if n]
            shown = ", ".join(f"{name} {n}" for name, n in asked[:20]) + (f", ... ({len(asked) - 20} more classes)" if len(asked) > 20 else "")
            typer.echo(f"images: {plan.total} in {plural(plan.num_shards, 'shard')}: {shown}")
        if job.kind == "train":
            found = getattr(spec, "_found", None)
            if found:  # what the job will train on, as the submit read it (a wrong folder shows here)
                classes = ", ".join(f"{name} {n}" for name, n in list(found.items())[:20]) + (", ..." if len(found) > 20 else "")
                from .textsafe import plain, plural

                shown_as = getattr(request, "dataset", None) or job.spec["dataset"]  # the name the user gave, not store:KEY
                typer.echo(f"dataset {shown_as}: {plural(sum(found.values()), 'image')} in {plural(len(found), 'class')}: {classes}")
                for note in getattr(spec, "_notes", ()):
                    typer.echo(f"warning: {plain(note)}", err=True)
            recipe = job.spec["recipe"]
            typer.echo(f"recipe {job.spec['preset']}: " + " ".join(f"{k}={v}" for k, v in recipe.items() if k != "preset"))
    absent = getattr(spec, "_absent", None)
    if absent:  # --fill-to tops up the dataset's classes; one it has no image of is named, not guessed
        from .textsafe import plain

        typer.echo(
            f"warning: not in {plain(str(getattr(request, 'dataset', None)))}, so not filled: {plain(', '.join(absent[:20]))}{', ...' if len(absent) > 20 else ''} "
            "(a class folder with no image counts as absent; generate those with --label NAME --count N)",
            err=True,
        )
    _after_submit(service, job, wait=wait, as_json=as_json)


def _after_submit(service, job, *, wait: bool, as_json: bool) -> None:
    """On the embedded default this process runs the job, so the command follows it to its end (a bar with
    ``--wait``); on a fleet it returns at once unless ``--wait``."""
    embedded = service.runtime.settings.embedded
    if embedded and not wait and not as_json:
        typer.echo("this command returns when the job ends (Ctrl-C cancels it; --wait shows its progress)", err=True)
    if wait or embedded:
        _follow(service, job.id, runs_here=embedded, quiet=as_json or not wait, as_json=as_json)
    elif as_json:
        _emit_json(job.to_dict())


def _follow(service, job_id: str, *, runs_here: bool, quiet: bool = False, as_json: bool = False) -> None:
    """Follow a job to its end; Ctrl-C cancels it when ``runs_here`` (this process runs it: a submit on the
    embedded default), else only stops following (``jobs watch``, or a fleet's worker runs it)."""
    from .progress import follow_job

    try:
        job = follow_job(service, job_id, quiet=quiet)
    except KeyboardInterrupt:
        if runs_here:
            typer.echo(f"interrupted: cancelling job {job_id} ...", err=True)
            service.cancel(job_id)
            service.finish_local()
        else:
            typer.echo(f"stopped following; job {job_id} goes on (cganctl jobs watch {job_id})", err=True)
        raise typer.Exit(130) from None
    service.finish_local()
    if as_json:
        _emit_json(job.to_dict())
    else:
        from .views import print_outcome

        print_outcome(service, job)
    raise typer.Exit(EXIT_FOR_STATUS.get(job.status, 1))


@submit_app.command("generate")
def submit_generate(
    label: Annotated[Optional[list[str]], typer.Option("--label", help="Class to generate (repeatable).")] = None,
    balanced: Annotated[bool, typer.Option("--balanced", help="Equal counts over all classes.")] = False,
    count: Annotated[Optional[int], typer.Option("--count", help="Total images, split evenly over the classes (the first classes in the model's order take one more if it does not divide).")] = None,
    per_class: Annotated[Optional[int], typer.Option("--per-class", help="Images per class.")] = None,
    fill_to: Annotated[Optional[int], typer.Option("--fill-to", help="Top every class of --dataset up to N images.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="ImageFolder directory or .tar/.tar.gz, with --fill-to.")] = None,
    model: Annotated[str, typer.Option("--model", help="NAME[:VERSION] of a generator.")] = GenerateRequest.model,
    seed: Annotated[int, typer.Option("--seed", help="The noise: jobs of one model and seed draw the same images (400 cats repeat a 200-cat job): a new seed for new images.")] = GenerateRequest.seed,
    truncation: Annotated[Optional[float], typer.Option("--truncation", help="Resample noise beyond this magnitude.")] = None,
    min_confidence: Annotated[Optional[float], typer.Option("--min-confidence", help="Keep samples the classifier gives their label with p >= P.")] = None,
    classifier: Annotated[Optional[str], typer.Option("--classifier", help="NAME[:VERSION] used with --min-confidence.")] = None,
    format: Annotated[str, typer.Option("--format", help="webdataset | imagefolder | npz")] = GenerateRequest.format,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", help="Images per shard (default CGAN_SHARD_SIZE).")] = None,
    queue: QueueOpt = None,
    priority: PriorityOpt = 0,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate class-conditional images into sharded files in the object store."""
    request = GenerateRequest(
        labels=tuple(label or ()), balanced=balanced, count=count, per_class=per_class, fill_to=fill_to, dataset=dataset,
        model=model, seed=seed, truncation=truncation, min_confidence=min_confidence, classifier=classifier,
        format=format, shard_size=shard_size,
    )
    _submit(request, queue=queue, priority=priority, wait=wait, as_json=as_json)


@submit_app.command("train")
def submit_train(
    preset: Annotated[
        str, typer.Option("--preset", help="resnet (CPU GAN default), biggan (GPU-sized GAN, bf16 on CUDA), mlp (baseline GAN) or classifier; see README 'Presets'.")
    ] = TrainRequest.preset,
    dataset: Annotated[str, typer.Option("--dataset", help="cifar10, an ImageFolder directory or a .tar/.tar.gz of one.")] = TrainRequest.dataset,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Default: the preset's.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", help="Steps between checkpoints (default: the preset's).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Default: the preset's (0).")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE override of the preset's recipe (repeatable), e.g. --set lr_g=1e-4 --set n_dis=1.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Register the result as this model name (versions :1, :2, ...); default: <preset>-gan, or classifier.")] = None,
    queue: QueueOpt = None,
    priority: PriorityOpt = 0,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a conditional GAN (or the scoring classifier); checkpoints go to the object store."""
    request = TrainRequest(
        preset=preset, dataset=dataset, overrides=tuple(overrides or ()), steps=steps, batch_size=batch_size,
        checkpoint_every=checkpoint_every, seed=seed, name=name,
    )
    _submit(request, queue=queue, priority=priority, wait=wait, as_json=as_json)


@submit_app.command("evaluate")
def submit_evaluate(
    model: Annotated[str, typer.Option("--model", help="NAME[:VERSION] of the generator.")] = EvaluateRequest.model,
    classifier: Annotated[Optional[str], typer.Option("--classifier", help="NAME[:VERSION] of the scoring classifier (default: the shipped one).")] = None,
    no_classifier: Annotated[bool, typer.Option("--no-classifier", help="No scoring classifier: the Inception metrics only (a one-class model, or none trained on its classes).")] = False,
    reference: Annotated[str, typer.Option("--reference", help="Dataset for FID statistics (cifar10, folder or tar).")] = EvaluateRequest.reference,
    samples_per_class: Annotated[Optional[int], typer.Option("--samples-per-class", help="Default 5000 (the standard 50k protocol for 10 classes).")] = None,
    reference_limit: Annotated[Optional[int], typer.Option("--reference-limit", help="Use at most N reference images.")] = None,
    inception: Annotated[bool, typer.Option("--inception/--no-inception", help="Standard Inception FID (slow on CPU).")] = EvaluateRequest.inception,
    seed: Annotated[int, typer.Option("--seed")] = EvaluateRequest.seed,
    truncation: Annotated[Optional[float], typer.Option("--truncation", help="Sample as `submit generate --truncation` does: resample noise beyond this magnitude.")] = None,
    downstream: Annotated[bool, typer.Option("--downstream", help="Also score usefulness: CAS, augmentation gain, precision/recall, density/coverage (needs a reference with a test split).")] = False,
    downstream_fraction: Annotated[Optional[float], typer.Option("--downstream-fraction", help="Fraction (0, 1] of the real train split in the augmentation baseline.")] = None,
    downstream_steps: Annotated[Optional[int], typer.Option("--downstream-steps", help="Optimiser steps of each downstream classifier.")] = None,
    downstream_per_class: Annotated[Optional[int], typer.Option("--downstream-per-class", help="Generated training images per class.")] = None,
    downstream_min_confidence: Annotated[Optional[float], typer.Option("--downstream-min-confidence", help="Train on generated images the scoring classifier gives their label with p >= P.")] = None,
    queue: QueueOpt = None,
    priority: PriorityOpt = 0,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Score a generator: FID, label accuracy per class, intra-FID, a sample grid (and usefulness with --downstream)."""
    request = EvaluateRequest(
        model=model, classifier=classifier, no_classifier=no_classifier, reference=reference, samples_per_class=samples_per_class,
        reference_limit=reference_limit, inception=inception, seed=seed, truncation=truncation, downstream=downstream,
        downstream_fraction=downstream_fraction, downstream_steps=downstream_steps,
        downstream_per_class=downstream_per_class, downstream_min_confidence=downstream_min_confidence,
    )
    _submit(request, queue=queue, priority=priority, wait=wait, as_json=as_json)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[Optional[str], typer.Option("--status", help="queued | running | succeeded | failed | cancelled")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="train | evaluate | generate")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The most recent jobs, newest first."""
    from .specs import JobKind, JobStatus
    from .views import print_job_list

    if status and status not in JobStatus.__members__:
        _fail(f"unknown status {status!r}; choose one of {', '.join(JobStatus.__members__)}", 2)
    if kind and kind not in JobKind.__members__:
        _fail(f"unknown kind {kind!r}; choose one of {', '.join(JobKind.__members__)}", 2)
    service = _service()
    service.sweep()
    jobs = service.list(status=status, kind=kind, limit=limit)
    if as_json:
        _emit_json([j.to_dict() for j in jobs])
    elif not jobs:
        which = " ".join(f for f in (status, kind) if f)
        typer.echo(f"no {which + ' ' if which else ''}jobs" + ("" if which else " yet (cganctl submit generate --label frog --count 100)"))
    else:
        print_job_list(jobs)


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """Everything about one job: spec, status, progress, times, attempts, worker, error, metrics, artifacts."""
    from .views import job_details, print_job

    service = _service()
    service.sweep()
    job = service.get(job_id)
    if as_json:
        _emit_json(job_details(service, job))
    else:
        print_job(service, job)


@jobs_app.command("watch")
def jobs_watch(job_id: str) -> None:
    """Follow a job with a progress bar until it ends."""
    service = _service()
    service.sweep()
    _follow(service, service.get(job_id).id, runs_here=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel: a queued job at once, a running one after its current step or batch."""
    service = _service()
    service.sweep()
    job = service.get(job_id)
    outcome = service.cancel(job.id)
    if outcome == "cancelled":
        typer.echo(f"job {job.id} cancelled")
    elif outcome == "cancelling":
        boundary = {"train": "training step", "generate": "batch of images"}.get(job.kind, "batch")
        typer.echo(f"job {job.id} is running: it stops after its current {boundary} and is then marked cancelled")
    else:
        _fail(f"job {job.id} already {outcome}", 2)


@jobs_app.command("purge")
def jobs_purge(job_id: str) -> None:
    """Delete every stored object of a failed or cancelled job (its row stays, for the record)."""
    from . import cleanup

    service = _service()
    service.sweep()
    job = service.get(job_id)
    if job.status not in ("failed", "cancelled"):
        from .records import status_phrase

        _fail(f"job {job.id} {status_phrase(job.status)}: only failed or cancelled jobs can be purged", 2)
    deleted = cleanup.purge(service.runtime, job)
    typer.echo(f"job {job.id}: deleted {deleted} object(s) under {service.runtime.job_key(job.id, '')}")


@jobs_app.command("retry")
def jobs_retry(job_id: str, queue: QueueOpt = None, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Resubmit a job that did not succeed as a new job that points to the old one."""
    service = _service()
    service.sweep()
    job = service.retry(job_id, queue=queue)
    if not as_json:
        typer.echo(f"job {job.id} {job.kind} submitted (retry of {job.retry_of})")
    _after_submit(service, job, wait=wait, as_json=as_json)


@results_app.command("download")
def results_download(
    job_id: str,
    to: Annotated[str, typer.Option("--to", help="Destination folder (no symbolic link inside it is written through).")],
    layout: Annotated[Layout, typer.Option("--layout", help="webdataset: the shard files; imagefolder: DIR/<class>/<key>.png")] = Layout.webdataset,
) -> None:
    """Fetch a job's results: a generate job's shards (every checksum verified against the manifest, optionally
    unpacked), a train job's model (weights, model.json, loss curve, samples), an evaluate job's metrics and grid."""
    from .results import download

    if not to.strip():
        _fail("--to needs a folder: '' is not one", 2)
    service = _service()
    try:
        summary = download(service, job_id, Path(to), layout.value)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: nothing was written to {to}", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Shipped and registered models."""
    from .views import print_models

    records = _service().runtime.models.all()
    if as_json:
        _emit_json([{"ref": m.ref, "kind": m.kind, "job_id": m.job_id, "weights_key": m.weights_key, "meta": m.meta} for m in records])
    else:
        print_models(records)


@datasets_app.command("add")
def datasets_add(
    name: Annotated[str, typer.Argument(help="Name jobs will use: --dataset NAME / --reference NAME.")],
    archive: Annotated[str, typer.Argument(help="An ImageFolder folder (packed into a reproducible .tar.gz) or a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz of one (train/ and test/ splits optional).")],
    as_json: JsonOpt = False,
) -> None:
    """Check a folder or archive under the reading budgets, upload it to the object store and register it as NAME."""
    from cganmodel.dataset_index import Skipped

    if "://" in archive:  # a Path would fold s3://b/k into s3:/b/k and say that does not exist
        _fail(f"datasets add reads a local archive, not {_clip(archive, 200)}: an archive already in the project's bucket is a "
              "dataset as it is (--dataset s3://BUCKET/KEY); one elsewhere, download it first", 2)

    from . import datasets
    from .settings import get_settings
    from .store import open_store
    from .textsafe import plain

    settings = get_settings()
    store = open_store(settings)
    try:
        previous = datasets.get(store, name) if datasets.NAME.match(name) else None
    except datasets.DatasetError:  # an unreadable index: adding the dataset again is the cure, so it goes on
        previous = None
    skipped = Skipped()
    try:
        entry = datasets.add(store, settings, name, Path(archive).expanduser(), skipped=skipped)
    except KeyboardInterrupt:  # the index is written last: until then no job can name the new archive
        typer.echo(f"interrupted: dataset {name} was not {'replaced' if previous is not None else 'registered'}", err=True)
        raise typer.Exit(130) from None
    replaced = previous if previous is not None and previous.key != entry.key else None
    warnings = skipped.notes()
    extra = datasets.classes_only_in_test(entry.splits)
    if extra:  # fine for a GAN (it reads the train split), not for a classifier: said now, not at its submit
        warnings.append(f"its test split has classes the train split lacks ({', '.join(extra)}): `submit train --preset classifier` refuses it")
    if as_json:
        _emit_json({**datasets.describe(entry), "replaced": replaced.key if replaced else None, "warnings": warnings})
        return
    from .textsafe import plural

    splits = ", ".join(f"{split} {plural(sum(counts.values()), 'image')}" for split, counts in entry.splits.items())
    typer.echo(f"dataset {entry.name}: {plural(len(entry.classes), 'class')} ({plain(', '.join(entry.classes))}), {splits}; stored as {entry.key}")
    for note in warnings:
        typer.echo(f"warning: {plain(note)}", err=True)
    if replaced is not None:
        typer.echo(f"replaces {name} added {replaced.added_at[:19]} from {plain(replaced.source)} ({replaced.key}); jobs already submitted keep reading that one")


@datasets_app.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    """Registered datasets."""
    from . import datasets
    from .settings import get_settings
    from .store import open_store

    entries = datasets.registered(open_store(get_settings()))
    if as_json:
        _emit_json([datasets.describe(e) for e in entries])
        return
    if not entries:
        typer.echo("no datasets registered (cganctl datasets add NAME ARCHIVE)")
        return
    from .views import print_datasets

    print_datasets(entries)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Run the Alembic migrations to head."""
    from .db import upgrade
    from .settings import get_settings, redact_url

    settings = get_settings()
    head = upgrade(settings)
    typer.echo(f"job table at {redact_url(settings.sqlalchemy_url)} is at revision {head}")


@app.command("worker")
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")] = "gpu",
    pool: Annotated[Pool, typer.Option("--pool", help="solo for GPU workers (CUDA cannot start in a forked child).")] = Pool.solo,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Tasks at once (threads/prefork).")] = 1,
    hostname: Annotated[
        Optional[str], typer.Option("--hostname", "-n", help="Worker name, e.g. gpu0@%h (default worker<pid>@<host>: two workers of one host never share a name).")
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    metrics_port: Annotated[
        Optional[int], typer.Option("--metrics-port", min=1, max=65535, help="Serve Prometheus /metrics on this port (default CGAN_METRICS_PORT; unset: none).")
    ] = None,
    metrics_addr: Annotated[str, typer.Option("--metrics-addr", help="Address /metrics listens on (127.0.0.1: this host only).")] = "0.0.0.0",
) -> None:
    """Start a Celery worker (needs CGAN_BROKER_URL)."""
    from .settings import get_settings
    from .submission import QUEUE_NAME

    names = queues.split(",")
    for name in names:  # the names a submit accepts, so no worker waits on a queue no job can reach
        if not QUEUE_NAME.match(name):
            _fail(f"invalid queue name {name!r} in --queues {queues!r}: comma-separated names of 1 to 64 letters, digits, '_', '.', '-'", 2)
    settings = get_settings()
    if settings.embedded:
        _fail("no broker configured: set CGAN_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run a worker", 2)
    try:  # every job runs with PyTorch: a worker without it would take tasks and fail each one
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as exc:
        _fail(f"the worker needs PyTorch (torch and torchvision, README 'Installing the wheel'): {type(exc).__name__}: {exc}", 2)
    from .health import worker_preflight

    for warning in worker_preflight(settings):  # a refusal or a table not at head: error: line, exit, no message taken
        typer.echo(f"warning: {_clip(warning)} (starting anyway: tasks wait for it)", err=True)
    if settings.visibility_timeout <= settings.task_time_limit:  # allowed (tests shorten it), but worth a word
        typer.echo(
            f"warning: CGAN_VISIBILITY_TIMEOUT ({settings.visibility_timeout} s) is not above CGAN_TASK_TIME_LIMIT "
            f"({settings.task_time_limit} s): Redis hands a task still running to another worker, whose delivery its "
            "live lease refuses (a wasted delivery); set it above the longest task", err=True)
    metrics_port = metrics_port or settings.metrics_port
    if metrics_port is not None:
        if pool is Pool.prefork:
            _fail(f"--metrics-port needs --pool solo or threads (a {pool.value} child process would count in its own memory)", 2)
        from worker import metrics

        metrics.serve(metrics_port, metrics_addr)
        shown = f"[{metrics_addr}]" if ":" in metrics_addr else metrics_addr
        typer.echo(f"worker metrics on http://{shown}:{metrics_port}/metrics")
    from worker.celery_app import app as celery_app

    argv = ["worker", "-Q", queues, "--pool", pool.value, "-c", str(concurrency), "-l", loglevel, "--without-gossip", "--without-mingle"]
    argv += ["-n", hostname or f"worker{os.getpid()}@%h"]  # Celery's celery@%h made two workers of one host one name
    celery_app.worker_main(argv)


@app.command("metrics")
def metrics(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port of /metrics.")] = 9809,
    addr: Annotated[str, typer.Option("--addr", help="Address to listen on.")] = "0.0.0.0",
) -> None:
    """Serve control-plane Prometheus metrics: queue lengths, jobs by status and kind, oldest queued job's age."""
    from .metrics import serve_forever
    from .settings import get_settings

    try:
        serve_forever(get_settings(), port, addr, on_ready=lambda url: typer.echo(f"control-plane metrics on {url} (read at each scrape; Ctrl-C stops)"))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """Whether the broker, the database and the object store answer, and the live workers."""
    from .health import check_all
    from .views import print_status

    report = check_all()
    if as_json:
        _emit_json(report)
    else:
        print_status(report)
    failed = [part for part in report["services"].values() if not part["ok"]]
    if failed:  # 2 where a setting is invalid (nothing to reach), else 3 (a service did not answer)
        raise typer.Exit(2 if any(part.get("exit_code") == 2 for part in failed) else 3)


@app.command("ui")
def ui(
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs CGAN_UI_TOKEN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8780,
) -> None:
    """Read-only web dashboard: jobs, sample grids, curves, models and the fleet (needs the 'ui' extra)."""
    try:
        from .ui.server import serve
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("starlette", "jinja2", "uvicorn", "markupsafe", "anyio"):
            _fail(f"the dashboard needs the 'ui' extra ({missing} is missing): pip install 'cganctl[ui]'", 2)
        raise
    serve(host, port, echo=typer.echo)


def _settings_error(exc: Exception) -> str | None:
    """One line for an invalid ``CGAN_*`` value (a pydantic ValidationError of Settings, or pydantic-settings'
    SettingsError for a JSON-valued one that does not parse), else None."""
    if type(exc).__name__ == "SettingsError":
        import re

        field = re.search(r'field "(\w+)"', str(exc))
        name = f"CGAN_{field.group(1).upper()}" if field else "CGAN_*"
        return f"invalid setting {name}: not valid JSON ({exc.__cause__ or exc})"
    if type(exc).__name__ != "ValidationError" or "Settings" not in str(getattr(exc, "title", "")):
        return None
    first = exc.errors()[0]  # type: ignore[attr-defined]
    rule = str(first["msg"]).removeprefix("Value error, ")
    if not first.get("loc"):  # a rule between settings: its message names them
        return f"invalid settings: {rule}"
    shape = {"list_type": ' (a JSON list, e.g. ["/srv/datasets"])', "dict_type": ' (a JSON object, e.g. {"evaluate": "cpu"})'}.get(first.get("type"), "")
    return f"invalid setting CGAN_{str(first['loc'][0]).upper()}: {rule}{shape}"


ERROR_LINE_MAX = 1000  # characters of one `error:` line: a 100 kB argument is not echoed back whole


def _clip(message: str, limit: int = ERROR_LINE_MAX) -> str:
    if len(message) <= limit:
        return message
    return f"{message[: limit - 200]}... [{len(message) - limit + 100} characters left out] ...{message[-100:]}"


def main() -> None:
    import logging

    from .errors import CganError
    from .redact import cli_log_handler, scrub
    from .textsafe import plain

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(cli_log_handler())
    try:
        try:
            code = app(standalone_mode=False)  # usage errors come back as exceptions: one `error:` line below
        except SystemExit as exc:  # Typer exits 1 on EPIPE (`cganctl ... | head`), which would read "job failed"
            if isinstance(exc.__context__, BrokenPipeError):
                sys.exit(EXIT_PIPE_CLOSED)
            raise
    except typer.TyperException as exc:  # Typer's own click: a bad option value, an unknown option or command
        if type(exc).__name__ == "NoArgsIsHelpError":  # `cganctl submit` alone: the help is the answer
            if exc.format_message().strip():  # rich help has printed itself already; plain help prints here
                exc.show()  # type: ignore[attr-defined]
        else:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            usage = exc.format_message().replace("Value error, ", "")  # Typer's enum check words it as pydantic does
            typer.echo(f"error: {_clip(plain(scrub(usage), one_line=True))}{hint}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:  # a prompt answered with end-of-input
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    except CganError as exc:
        typer.echo(f"error: {_clip(plain(scrub(str(exc))))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # no traceback reaches the user: one scrubbed line
        message = _settings_error(exc)
        if message is not None:
            typer.echo(f"error: {_clip(plain(scrub(message)))}", err=True)
            sys.exit(2)
        typer.echo(f"error: {_clip(plain(scrub(f'{type(exc).__name__}: {exc}'), one_line=True))}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code) and Ctrl-C (130) come back as a number
