"""Evaluate jobs: FID (Inception and classifier features), label accuracy, per-class intra-FID, a grid.

Without a classifier (``--no-classifier``) the Inception metrics only. Reference statistics are computed
once per (reference set, protocol, classifier) and cached in the object store under ``cache/reference-stats/``.
"""
from __future__ import annotations

import hashlib
import json
import logging

from scheduler.errors import NotFound
from scheduler.specs import EvaluateSpec

from . import models
from .context import JobContext

log = logging.getLogger(__name__)


def _progress(ctx: JobContext):
    """Evaluation runs in stages (reference features, generate, classify, inception): report each."""

    def report(update: dict) -> None:
        ctx.report(update["done"], total=update["total"], info={"stage": update["stage"]})
        ctx.check_cancelled()

    return report


def _reference(
    ctx: JobContext, spec: EvaluateSpec, classifier: models.LoadedModel | None, classes: list[str], device: str
) -> tuple[dict, dict | None]:
    """Reference statistics, and with ``--downstream`` the raw reference features (for PRDC); both cached."""
    from cganmodel.dataset_index import fingerprint
    from cganmodel.evaluation import reference_stats
    from cganmodel.fid import stats_from_bytes, stats_to_bytes

    protocol = {
        "reference": spec.reference,
        "reference_content": fingerprint(ctx.dataset_path(spec.reference), ctx.runtime.settings.dataset_limits()),
        "split": "train",
        "limit": spec.reference_limit,
        "classifier_sha256": classifier.sha256 if classifier is not None else None,
        "inception": spec.inception,
        "version": 3,  # 3: images of another shape are centre-cropped before the resize (2 stretched them)
    }
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:32]
    key = f"cache/reference-stats/{digest}.safetensors"
    features_key = f"cache/reference-features/{digest}.safetensors"
    try:
        stats = stats_from_bytes(ctx.store.get_bytes(key))
        if not spec.downstream:
            return stats, None
        return stats, stats_from_bytes(ctx.store.get_bytes(features_key))
    except NotFound:
        pass
    except ValueError as exc:  # a corrupt cache object: computed again below and overwritten
        log.warning("reference cache %s is unreadable (%s): computing it again", key, exc)
    data = ctx.load_dataset(spec.reference, "train", keep=spec.downstream)  # this worker's roots and budgets; kept for downstream
    if list(data.classes) != list(classes):
        raise ValueError(f"reference {spec.reference} has classes {data.classes}, the model has {classes}")
    features: dict = {}
    stats = reference_stats(
        data,
        classifier=classifier.module if classifier is not None else None,
        inception=spec.inception,
        max_images=spec.reference_limit,
        device=device,
        on_progress=_progress(ctx),
        features_out=features,
    )
    ctx.store.put_bytes(key, stats_to_bytes(stats))
    if not spec.downstream:
        return stats, None
    from cganmodel.downstream import prdc_subset

    features = {space: prdc_subset(f).astype("float32") for space, f in features.items()}
    ctx.store.put_bytes(features_key, stats_to_bytes(features))
    return stats, features


def run(ctx: JobContext, spec: EvaluateSpec) -> tuple[dict, dict]:
    from cganmodel.evaluation import evaluate_generator

    generator = models.load(ctx.runtime, spec.model, "generator")
    classifier = models.load(ctx.runtime, spec.classifier, "classifier") if spec.classifier is not None else None
    classes = list(generator.record.meta["classes"])
    reference, reference_features = _reference(ctx, spec, classifier, classes, generator.device)
    generated_features: dict = {}
    metrics, grid_png = evaluate_generator(
        generator.module,
        classes,
        classifier=classifier.module if classifier is not None else None,
        samples_per_class=spec.samples_per_class,
        seed=spec.seed,
        truncation=spec.truncation,
        reference=reference,
        inception=spec.inception,
        device=generator.device,
        on_progress=_progress(ctx),
        features_out=generated_features,
    )
    if spec.downstream:
        from .downstream_job import downstream

        assert reference_features is not None and classifier is not None, "the spec has both for --downstream"
        metrics.update(downstream(ctx, spec, generator, classifier, classes, reference_features, generated_features, _progress(ctx)))
    metrics = dict(metrics, model=spec.model, classifier=spec.classifier, reference=spec.reference, per_class=_per_class(metrics, classes))
    metrics_key = ctx.put("metrics.json", json.dumps(metrics, indent=2, sort_keys=True, default=float).encode(), "application/json")
    grid_key = ctx.put("samples.png", grid_png, "image/png")
    samples = spec.samples_per_class * len(classes)
    ctx.report(samples, total=samples, info={"stage": "done"}, force=True)  # not a throttled stage's last count
    return metrics, {"metrics": metrics_key, "samples": grid_key}


def _per_class(metrics: dict, classes: list[str]) -> dict[str, dict[str, float]]:
    """One row per class for `jobs show`: every metric that has a per-class breakdown."""
    columns = {
        "label_accuracy": metrics.get("label_accuracy_per_class"),
        "classifier_intra_fid": metrics.get("classifier_intra_fid"),
        "inception_intra_fid": metrics.get("inception_intra_fid"),
        "cas_accuracy": metrics.get("cas_accuracy_per_class"),
        "augmentation_baseline": _column(metrics.get("augmentation_gain_per_class"), "baseline"),
        "augmentation_augmented": _column(metrics.get("augmentation_gain_per_class"), "augmented"),
        "augmentation_gain": _column(metrics.get("augmentation_gain_per_class"), "gain"),
    }
    tables: dict[str, dict] = {name: values for name, values in columns.items() if isinstance(values, dict)}
    if not tables:  # e.g. --no-classifier on one class: no metric has a per-class breakdown
        return {}
    return {c: {name: values[c] for name, values in tables.items() if c in values} for c in classes}


def _column(table: dict | None, field: str) -> dict | None:
    return {c: row[field] for c, row in table.items()} if isinstance(table, dict) else None
