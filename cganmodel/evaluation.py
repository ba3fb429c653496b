"""Evaluating a class-conditional generator: label accuracy, FID and per-class intra-FID.

Reference statistics (``reference_stats``) are computed once per data set and feature space and
cached by the worker as bytes (``fid.stats_to_bytes``). Keys::

    count, class_counts
    <space>/mu, <space>/sigma                  all reference images
    <space>/class<i>/mu, <space>/class<i>/sigma   images of class i (classes with >= 2 images)

with ``<space>`` in ``classifier`` (penultimate features of the given classifier: cheap, but only
comparable between runs using the same classifier weights) and ``inception`` (standard FID space).
Per-class Inception statistics are 32 MB a class (2048x2048 float64), so they are opt-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cganmodel.classifier import predict_proba
from cganmodel.fid import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    feature_stats,
    frechet_distance,
)
from cganmodel.imaging import to_uint8
from cganmodel.sampling import sample_noise

GRID_SAMPLES_PER_CLASS = 8
DEFAULT_Z_DIM = 128

Progress = Callable[[dict[str, Any]], None]


def _report(on_progress: Progress | None, stage: str, done: int, total: int) -> Callable[[int], None]:
    def report(n: int) -> None:
        if on_progress is not None:
            on_progress({"stage": stage, "done": n, "total": total})

    report(done)
    return report


def _extractors(classifier: nn.Module | None, inception: bool, device: torch.device | str) -> list[FeatureExtractor]:
    extractors: list[FeatureExtractor] = []
    if classifier is not None:
        extractors.append(ClassifierFeatures(classifier))
    if inception:
        extractors.append(InceptionFeatures(device))
    return extractors


def _space_stats(
    space: str, feats: np.ndarray, labels: np.ndarray, num_classes: int, per_class: bool
) -> dict[str, np.ndarray]:
    stats: dict[str, np.ndarray] = {}
    stats[f"{space}/mu"], stats[f"{space}/sigma"] = feature_stats(feats)
    if per_class:
        for i in range(num_classes):
            sel = feats[labels == i]
            if len(sel) >= 2:
                stats[f"{space}/class{i}/mu"], stats[f"{space}/class{i}/sigma"] = feature_stats(sel)
    return stats


def reference_stats(
    data: Any,
    *,
    classifier: nn.Module | None = None,
    inception: bool = False,
    inception_per_class: bool = False,
    max_images: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    on_progress: Progress | None = None,
    features_out: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Feature statistics of an ImageData (``.images`` uint8 NHWC, ``.labels``, ``.classes``).

    ``max_images`` keeps a fixed (seed 0) random subset. The classifier should be in eval mode.
    ``batch_size``: images per forward (default: each network's own, ``FeatureExtractor.batch_size``).
    ``features_out``, if given, receives the raw features of that subset per space (for PRDC)."""
    extractors = _extractors(classifier, inception, device)
    if not extractors:
        raise ValueError("reference_stats needs a classifier and/or inception=True")
    images = torch.as_tensor(data.images)
    labels = np.asarray(data.labels, dtype=np.int64)
    if max_images is not None and max_images < len(images):
        keep = np.sort(np.random.default_rng(0).permutation(len(images))[:max_images])
        images, labels = images[torch.from_numpy(keep)], labels[keep]
    num_classes = len(data.classes)
    stats: dict[str, np.ndarray] = {
        "count": np.array([len(labels)], dtype=np.int64),
        "class_counts": np.bincount(labels, minlength=num_classes).astype(np.int64),
    }
    for ex in extractors:
        report = _report(on_progress, f"reference/{ex.name}", 0, len(labels))
        feats = ex.features(images, batch_size=batch_size, on_batch=report)
        if features_out is not None:
            features_out[ex.name] = feats
        per_class = ex.name != "inception" or inception_per_class
        stats.update(_space_stats(ex.name, feats, labels, num_classes, per_class))
    return stats


def _generate(
    G: nn.Module,
    num_classes: int,
    samples_per_class: int,
    seed: int,
    truncation: float | None,
    batch_size: int,
    device: torch.device | str,
    on_progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``samples_per_class`` images of every class, class-major; noise drawn up front from ``seed``."""
    z_dim = int(getattr(G, "z_dim", DEFAULT_Z_DIM))
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    z = sample_noise(len(labels), z_dim, torch.Generator().manual_seed(seed), truncation)
    report = _report(on_progress, "generate", 0, len(labels))
    out = []
    was_training = G.training
    G.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(labels), batch_size):
                out.append(to_uint8(G(z[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))))
                report(min(i + batch_size, len(labels)))
    finally:
        G.train(was_training)
    return torch.cat(out).numpy(), labels.numpy()


def _fid_metrics(
    space: str,
    feats: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    reference: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    if reference[f"{space}/mu"].shape != (feats.shape[1],):
        raise ValueError(
            f"reference {space} features are {reference[f'{space}/mu'].shape[0]}-d, generated are "
            f"{feats.shape[1]}-d: the reference was computed with a different feature extractor"
        )
    mu, sigma = feature_stats(feats)
    metrics: dict[str, Any] = {
        f"{space}_fid": frechet_distance(mu, sigma, reference[f"{space}/mu"], reference[f"{space}/sigma"])
    }
    intra = {}
    for i, name in enumerate(classes):
        if f"{space}/class{i}/mu" in reference:
            mu_i, sigma_i = feature_stats(feats[labels == i])
            intra[name] = frechet_distance(
                mu_i, sigma_i, reference[f"{space}/class{i}/mu"], reference[f"{space}/class{i}/sigma"]
            )
    if intra:
        metrics[f"{space}_intra_fid"] = intra
        metrics[f"{space}_intra_fid_mean"] = float(np.mean(list(intra.values())))
    return metrics


def evaluate_generator(
    G: nn.Module,
    classes: Sequence[str],
    *,
    classifier: nn.Module | None,
    samples_per_class: int = 100,
    seed: int = 0,
    truncation: float | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    inception: bool = False,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    on_progress: Progress | None = None,
    features_out: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Generate ``samples_per_class`` images of each class with ``G(z, y)`` (on ``device``) and score them;
    the noise is ``sample_noise`` from ``seed`` at ``truncation`` (None: untruncated), as a generate job's.

    Metrics: ``label_accuracy`` (+ ``_per_class``: classifier argmax == conditioning label) when a
    classifier is given; ``classifier_fid`` / ``classifier_intra_fid`` (+ ``_mean``) when a reference is
    given too; ``inception_fid`` (+ intra-FID where the reference has per-class Inception stats) when
    ``inception``; and ``protocol``. Returns the metrics and a labelled PNG grid (8 samples a class).
    ``features_out``, if given, receives the generated images' features per space (for PRDC).
    ``batch_size`` is the generator's and the label classifier's; the feature networks use their own."""
    from cganmodel.grid import labelled_grid_png

    if inception and reference is None:
        raise ValueError("Inception FID needs reference statistics")
    for space, wanted in (("classifier", classifier is not None), ("inception", inception)):
        if wanted and reference is not None and f"{space}/mu" not in reference:
            raise ValueError(f"reference statistics have no {space} features; recompute them with {space} enabled")
    wants_fid = reference is not None and (classifier is not None or inception)
    if samples_per_class < (2 if wants_fid else 1):
        raise ValueError(f"samples_per_class={samples_per_class} is too small")
    images, labels = _generate(G, len(classes), samples_per_class, seed, truncation, batch_size, device, on_progress)

    metrics: dict[str, Any] = {}
    if classifier is not None:
        report = _report(on_progress, "classify", 0, len(labels))
        correct = predict_proba(classifier, images, batch_size).argmax(axis=1) == labels
        report(len(labels))
        metrics["label_accuracy"] = float(correct.mean())
        metrics["label_accuracy_per_class"] = {
            name: float(correct[labels == i].mean()) for i, name in enumerate(classes)
        }
    extractors = _extractors(classifier, inception, device) if reference is not None else []
    for ex in extractors:
        assert reference is not None
        report = _report(on_progress, f"features/{ex.name}", 0, len(labels))
        feats = ex.features(images, on_batch=report)  # each network's own batch
        if features_out is not None:
            features_out[ex.name] = feats
        metrics.update(_fid_metrics(ex.name, feats, labels, classes, reference))

    metrics["protocol"] = {
        "num_samples": int(len(labels)),
        "samples_per_class": samples_per_class,
        "num_classes": len(classes),
        "seed": seed,
        "truncation": truncation,
        "z_dim": int(getattr(G, "z_dim", DEFAULT_Z_DIM)),
        "reference_images": int(reference["count"][0]) if reference is not None and "count" in reference else None,
        "feature_extractors": {
            ex.name: {"description": ex.description, "dim": ex.dim, "resize": ex.resize} for ex in extractors
        },
        "label_accuracy": "argmax of the classifier == conditioning label" if classifier is not None else None,
    }
    grid = labelled_grid_png(
        {name: images[labels == i][:GRID_SAMPLES_PER_CLASS] for i, name in enumerate(classes)}
    )
    return metrics, grid
