"""Generate jobs: one shard per task, then a manifest and a contact sheet once every shard is in.

A shard is a pure function of (model, job seed, shard index, spec): its labels come from
``GenerateSpec.shard_labels`` and its noise from ``cganmodel.seeding`` (shard seed, then one seed per
chunk of ``GENERATE_CHUNK`` images), so a retried shard writes the same bytes under the same key.
``cganmodel.shards.ShardEncoder`` encodes PNGs on a writer thread while the next chunk is generated.
"""
from __future__ import annotations

import hashlib
import io
from collections import Counter

from cganmodel.seeding import GENERATE_CHUNK, chunk_seed, describe_generate_seeding
from scheduler.manifest import Acceptance, Manifest, ManifestFile, ManifestModel
from scheduler.specs import GenerateSpec, ShardStatus

from . import models
from .context import JobContext

SHEET_PER_CLASS = 8


def shard_key(ctx: JobContext, spec: GenerateSpec, index: int) -> str:
    from cganmodel.shards import shard_name

    return ctx.key(f"shards/{shard_name(index, spec.format)}")


def make_shard(ctx: JobContext, spec: GenerateSpec, index: int) -> None:
    """Generate, encode and upload shard ``index``, then record it in the job table."""
    from cganmodel.sampling import generate
    from cganmodel.shards import Sample, ShardEncoder

    generator = models.load(ctx.runtime, spec.model, "generator")
    scorer = models.load(ctx.runtime, spec.classifier, "classifier").module if spec.classifier and spec.min_confidence else None
    classes: list[str] = list(generator.record.meta["classes"])
    names = spec.shard_labels(index)
    start, _ = spec.shard_range(index)
    shard_seed = spec.shard_seed(index)

    stats: dict[str, Counter] = {}
    with ShardEncoder(spec.format) as encoder:
        for chunk, offset in enumerate(range(0, len(names), GENERATE_CHUNK)):
            ctx.check_cancelled()
            chunk_names = names[offset : offset + GENERATE_CHUNK]
            out = generate(
                generator.module,
                [classes.index(n) for n in chunk_names],
                chunk_seed(shard_seed, chunk),
                truncation=spec.truncation,
                classifier=scorer,
                min_confidence=spec.min_confidence,
                batch_size=GENERATE_CHUNK,
                device=generator.device,
                on_batch=lambda _done: ctx.check_cancelled(),  # also inside min-confidence redraw rounds
                class_names=classes,
            )
            for class_index, counts in out.stats.items():
                stats.setdefault(classes[int(class_index)], Counter()).update(counts)
            encoder.add(
                [
                    Sample(
                        key=f"{start + offset + i:08d}",
                        image=out.images[i],
                        label=classes.index(name),
                        class_name=name,
                        meta={"label": name, "seed": spec.seed, "shard": index, "model": spec.model},
                    )
                    for i, name in enumerate(chunk_names)
                ]
            )
            ctx.report(offset + len(chunk_names))
    data = encoder.data
    assert data is not None

    key = shard_key(ctx, spec, index)
    ctx.put_retrying(key, data, "application/x-tar" if spec.format != "npz" else "application/zip")
    recorded = ctx.table.finish_shard(
        ctx.job.id,
        index,
        token=ctx.token,
        key=key,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        stats={
            "count_per_class": dict(Counter(names)),
            "candidates": {name: dict(c) for name, c in sorted(stats.items())},
        },
    )
    if not recorded and ctx.lease_lost:  # taken back while this delivery hung: the shard is another's now
        ctx.check_cancelled()  # raises JobCancelled: the task ends as "lease lost", writing nothing more


def finalize_if_complete(ctx: JobContext, spec: GenerateSpec) -> bool:
    """Once every shard succeeded: write the manifest and the contact sheet, then mark the job done.

    Several shards may finish at once and all get here: the manifest's bytes depend only on the
    shard rows, so they write the same objects, and only one of them wins the job's transition.
    """
    shards = ctx.table.shards(ctx.job.id)
    if not shards or any(s.status != ShardStatus.succeeded for s in shards):
        return False
    generator = models.load(ctx.runtime, spec.model, "generator")
    classes: list[str] = list(generator.record.meta["classes"])
    per_class: Counter = Counter()
    candidates: dict[str, Counter] = {}
    for shard in shards:
        per_class.update(shard.stats["count_per_class"])
        for name, counts in shard.stats["candidates"].items():
            candidates.setdefault(name, Counter()).update(counts)
    acceptance = {
        name: Acceptance(generated=c["generated"], accepted=c["accepted"], rate=round(c["accepted"] / c["generated"], 4))
        for name, c in sorted(candidates.items())
        if c.get("generated")
    }
    manifest = Manifest(
        job_id=ctx.job.id,
        format=spec.format,
        count=spec.total,
        count_per_class={name: per_class[name] for name in classes if per_class[name]},
        classes=classes,
        model=ManifestModel(ref=spec.model, sha256=generator.sha256, preset=generator.record.meta.get("config", {}).get("preset")),
        seed=spec.seed,
        seeding=describe_generate_seeding(),
        spec=spec.model_dump(mode="json"),
        acceptance=acceptance if spec.min_confidence else None,
        files=[
            ManifestFile(
                key=s.key,
                name=s.key.rsplit("/", 1)[-1],
                sha256=s.sha256,
                size=s.size,
                count=s.count,
                count_per_class=s.stats["count_per_class"],
                shard_seed=spec.shard_seed(s.index),
            )
            for s in shards
        ],
    )
    manifest_key = ctx.put("manifest.json", manifest.to_bytes(), "application/json")
    sheet_key = ctx.put("contact-sheet.png", contact_sheet(ctx, spec, [s.key for s in shards], classes), "image/png")
    ctx.table.succeed(
        ctx.job.id,
        metrics={"images": spec.total, "count_per_class": manifest.count_per_class, "shards": len(shards), "acceptance": manifest.model_dump(mode="json")["acceptance"]},
        artifacts={
            "manifest": manifest_key,
            "contact_sheet": sheet_key,
            "shards": [s.key for s in shards],
            "location": ctx.store.location(ctx.key("")),
        },
    )
    return True


def contact_sheet(ctx: JobContext, spec: GenerateSpec, keys: list[str], classes: list[str]) -> bytes:
    """A labelled row of real output samples per class, read back from the first shards."""
    import numpy as np

    from cganmodel.grid import labelled_grid_png
    from cganmodel.shards import iter_shard

    wanted = {name for name, n in spec.counts.items() if n}
    rows: dict[str, list] = {name: [] for name in classes if name in wanted}
    for key in keys:
        for sample in iter_shard(io.BytesIO(ctx.store.get_bytes(key)), spec.format, classes=classes):
            row = rows[sample.class_name]
            if len(row) < SHEET_PER_CLASS:
                row.append(sample.image)
        if all(len(row) >= min(SHEET_PER_CLASS, spec.counts[name]) for name, row in rows.items()):
            break
    return labelled_grid_png({name: np.stack(row) for name, row in rows.items() if row})
