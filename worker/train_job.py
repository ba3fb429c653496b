"""Train jobs: a GAN preset or the scoring classifier, checkpointed to the object store, resumable.

Checkpoints go to ``jobs/<id>/checkpoints/step-XXXXXXX/<file>`` and then ``checkpoints/latest.json``
names the newest complete one, so a redelivered task (or ``jobs retry``, via ``resume_from``) resumes
from the last checkpoint that was fully written.
"""
from __future__ import annotations

import json
import time

from scheduler.errors import NotFound
from scheduler.specs import TrainSpec

from .context import JobContext

LATEST = "checkpoints/latest.json"


def _latest_checkpoint(ctx: JobContext, job_id: str) -> dict[str, bytes] | None:
    try:
        latest = json.loads(ctx.store.get_bytes(ctx.runtime.job_key(job_id, LATEST)))
    except NotFound:
        return None
    return {name: ctx.store.get_bytes(f"{latest['prefix']}/{name}") for name in latest["files"]}


def _save_checkpoint(ctx: JobContext, step: int, files: dict[str, bytes]) -> None:
    prefix = ctx.key(f"checkpoints/step-{step:07d}")
    for name, data in sorted(files.items()):
        ctx.store.put_bytes(f"{prefix}/{name}", data, "image/png" if name.endswith(".png") else "application/octet-stream")
    latest = {"step": step, "prefix": prefix, "files": sorted(files)}
    ctx.put(LATEST, json.dumps(latest, sort_keys=True).encode(), "application/json")
    from worker.retention import prune_checkpoints

    prune_checkpoints(ctx.store, ctx.key("checkpoints"), ctx.runtime.settings.keep_checkpoints)


def run(ctx: JobContext, spec: TrainSpec) -> tuple[dict, dict]:
    from cganmodel.trainers import make_trainer

    data = ctx.load_dataset(spec.dataset, "train")  # this worker's roots, file system and budgets
    trainer = make_trainer(spec.preset, data, spec.recipe)
    files = _latest_checkpoint(ctx, ctx.job.id) or (spec.resume_from and _latest_checkpoint(ctx, spec.resume_from))
    if files:
        trainer.load_checkpoint(files)

    started = time.monotonic()
    last: dict = {}

    def on_progress(info: dict) -> None:
        last.update(info)
        ctx.report(int(info["step"]), total=spec.steps, info={k: v for k, v in info.items() if k not in ("step", "steps")})

    result = trainer.run(
        on_progress=on_progress,
        on_checkpoint=lambda step, files: _save_checkpoint(ctx, step, files),
        should_stop=ctx.should_stop,
    )
    if result.stopped:
        ctx.raise_stopped()
    ctx.report(spec.steps, total=spec.steps, info={k: v for k, v in last.items() if k not in ("step", "steps")}, force=True)

    weights, meta = trainer.export()
    kind = meta["kind"]
    meta = dict(meta, dataset=spec.dataset, steps=spec.steps, job_id=ctx.job.id)
    weights_key = ctx.put(f"model/{kind}.safetensors", weights)
    ctx.put("model/model.json", json.dumps(meta, indent=2, sort_keys=True).encode(), "application/json")
    record = ctx.runtime.models.register(name=spec.model_name, kind=kind, job_id=ctx.job.id, weights_key=weights_key, meta=meta)

    latest = json.loads(ctx.store.get_bytes(ctx.key(LATEST)))
    metrics = {
        "steps": spec.steps,
        "wall_s": round(time.monotonic() - started, 1),
        "model": record.ref,
        **{k: v for k, v in last.items() if k not in ("step", "steps")},
    }
    if kind == "classifier":
        metrics.update(_test_accuracy(ctx, trainer, spec))
    artifacts = {
        "model": weights_key,
        "checkpoint": latest["prefix"],
        "loss_curve": f"{latest['prefix']}/loss.png" if "loss.png" in latest["files"] else None,
        "samples": f"{latest['prefix']}/samples.png" if "samples.png" in latest["files"] else None,
    }
    return metrics, {k: v for k, v in artifacts.items() if v}


def _test_accuracy(ctx: JobContext, trainer, spec: TrainSpec) -> dict:
    """Accuracy on the dataset's test split, where it has one."""
    from cganmodel.classifier import evaluate_accuracy

    try:
        test = ctx.load_dataset(spec.dataset, "test")
    except ValueError:
        return {}
    if len(test) == len(trainer.data):  # no separate test split: the loader fell back to the only tree
        return {}
    return {"test": evaluate_accuracy(trainer.model, test.relabelled(trainer.data.classes))}
