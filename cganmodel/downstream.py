"""Is a generated set useful? Downstream metrics for a class-conditional generator.

- **CAS**, classification accuracy score (Ravuri & Vinyals 2019): a classifier trained only on
  generated images, tested on the real test split (overall and per class).
- **Augmentation gain**: a classifier trained on a fixed, seeded, class-stratified subset of the real
  train split versus one trained on that subset plus the generated images, with the same number of
  optimiser steps, batch size and seed, both tested on the real test split.
- **Precision / recall** (Kynkaanniemi et al. 2019, k=3) and **density / coverage** (Naeem et al. 2020,
  k=5): k-nearest-neighbour manifold estimates in a feature space (the caller says which).

Every downstream classifier is trained here from scratch with the project's network and trainer
(:mod:`cganmodel.classifier`): never the scoring classifier, never one a generator was trained against.
Library code: no job, database or object-store knowledge. Sizes, steps and fractions are arguments;
their defaults live in the evaluate job's spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cganmodel.classifier import ClassifierConfig, evaluate_accuracy
from cganmodel.data import ImageData
from cganmodel.presets import PRESETS, ClassifierTrainConfig
from cganmodel.seeding import DOWNSTREAM_STREAMS, mix_seed
from cganmodel.train_classifier import ClassifierTrainer

PRECISION_RECALL_K = 3  # Kynkaanniemi et al. 2019
DENSITY_COVERAGE_K = 5  # Naeem et al. 2020
#: PRDC uses at most this many real and this many generated feature vectors (as Naeem et al.: 10k).
PRDC_MAX_SAMPLES = 10_000

Progress = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------- data


def stratified_subset(data: ImageData, fraction: float, seed: int) -> ImageData:
    """``round(fraction * n_c)`` (at least 1) images of each class c, chosen with ``seed``; fixed order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(data.labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(data.classes)):
        idx = np.flatnonzero(labels == c)
        if len(idx):
            n = max(1, int(round(fraction * len(idx))))
            keep.append(np.sort(rng.permutation(idx)[:n]))
    sel = torch.from_numpy(np.sort(np.concatenate(keep)))
    return ImageData(torch.as_tensor(data.images)[sel], torch.as_tensor(data.labels)[sel], data.classes)


def _as_data(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, classes: Sequence[str]) -> ImageData:
    return ImageData(torch.as_tensor(images), torch.as_tensor(np.asarray(labels), dtype=torch.int64), list(classes))


def _concat(a: ImageData, b: ImageData) -> ImageData:
    return ImageData(
        torch.cat([torch.as_tensor(a.images), torch.as_tensor(b.images)]),
        torch.cat([torch.as_tensor(a.labels), torch.as_tensor(b.labels)]),
        a.classes,
    )


# --------------------------------------------------------------------------------------- classifiers


def train_and_test(
    train: ImageData,
    test: ImageData,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    width: int = ClassifierConfig.width,
    device: torch.device | str = "cpu",
    stage: str = "train",
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Train a fresh classifier (project network and recipe, ``steps`` optimiser steps) on ``train``,
    return its accuracy on ``test``: ``{"accuracy", "count", "per_class"}``."""
    if list(train.classes) != list(test.classes):
        raise ValueError(f"train classes {train.classes} differ from test classes {test.classes}")
    cfg = ClassifierConfig(num_classes=len(train.classes), classes=list(train.classes), width=width)
    train_cfg = ClassifierTrainConfig(
        steps=steps, batch_size=batch_size, seed=seed, checkpoint_every=steps, progress_every=max(1, min(25, steps)),
        device=str(device),
    )
    trainer = ClassifierTrainer(cfg, train_cfg, train)

    def report(entry: dict[str, float]) -> None:
        if on_progress is not None:
            on_progress({"stage": stage, "done": int(entry["step"]), "total": steps})

    if on_progress is not None:
        on_progress({"stage": stage, "done": 0, "total": steps})
    trainer.run(on_progress=report)
    return evaluate_accuracy(trainer.model, test)


def classification_accuracy_score(
    generated: ImageData, test: ImageData, *, steps: int, batch_size: int, seed: int, **kw: Any
) -> dict[str, Any]:
    """CAS: accuracy on the real ``test`` split of a classifier trained only on ``generated``."""
    return train_and_test(generated, test, steps=steps, batch_size=batch_size, seed=seed, stage="cas/train", **kw)


def augmentation_gain(
    real_subset: ImageData, generated: ImageData, test: ImageData, *, steps: int, batch_size: int, seed: int, **kw: Any
) -> dict[str, Any]:
    """Accuracy on ``test`` of a classifier trained on ``real_subset`` (baseline) and of one trained on
    ``real_subset`` + ``generated`` (augmented), same steps, batch size and seed; the gain is their
    difference, overall and per class."""
    base = train_and_test(real_subset, test, steps=steps, batch_size=batch_size, seed=seed, stage="augment/baseline", **kw)
    aug = train_and_test(
        _concat(real_subset, generated), test, steps=steps, batch_size=batch_size, seed=seed, stage="augment/augmented", **kw
    )
    return {
        "baseline_accuracy": base["accuracy"],
        "augmented_accuracy": aug["accuracy"],
        "gain": aug["accuracy"] - base["accuracy"],
        "per_class": {
            name: {
                "baseline": base["per_class"][name],
                "augmented": aug["per_class"][name],
                "gain": aug["per_class"][name] - base["per_class"][name],
            }
            for name in base["per_class"]
        },
    }


def downstream_metrics(
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    train: ImageData,
    test: ImageData,
    *,
    fraction: float,
    steps: int,
    seed: int,
    batch_size: int = PRESETS["classifier"].recipe["batch_size"],
    width: int = ClassifierConfig.width,
    device: torch.device | str = "cpu",
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """CAS and augmentation gain of one generated set (uint8 NHWC images, int labels in ``train``'s
    class order). Metric keys ``cas_accuracy``, ``cas_accuracy_per_class``, ``augmentation_gain``,
    ``augmentation_gain_per_class``, ``augmentation_baseline_accuracy``, ``augmentation_augmented_accuracy``
    and ``downstream_protocol``."""
    if list(train.classes) != list(test.classes):
        raise ValueError(f"train split classes {train.classes} differ from test split classes {test.classes}")
    generated = _as_data(generated_images, generated_labels, train.classes)
    subset_seed = mix_seed(seed, DOWNSTREAM_STREAMS["real_subset"])
    subset = stratified_subset(train, fraction, subset_seed)
    kw = dict(width=width, device=device, on_progress=on_progress)
    cas = classification_accuracy_score(generated, test, steps=steps, batch_size=batch_size, seed=seed, **kw)
    gain = augmentation_gain(subset, generated, test, steps=steps, batch_size=batch_size, seed=seed, **kw)
    gen_counts = np.bincount(np.asarray(generated_labels), minlength=len(train.classes))
    return {
        "cas_accuracy": cas["accuracy"],
        "cas_accuracy_per_class": cas["per_class"],
        "augmentation_gain": gain["gain"],
        "augmentation_baseline_accuracy": gain["baseline_accuracy"],
        "augmentation_augmented_accuracy": gain["augmented_accuracy"],
        "augmentation_gain_per_class": gain["per_class"],
        "downstream_protocol": {
            "network": f"project ResNet-9-style classifier, width {width}, trained from scratch for each score "
            "(never the scoring classifier)",
            "recipe": "SGD-Nesterov one-cycle, label smoothing 0.2, crop + flip (cganmodel.classifier defaults)",
            "steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "generated_images": int(len(generated_labels)),
            "generated_per_class": [int(n) for n in gen_counts],
            "cas": "trained only on the generated images, tested on the real test split",
            "augmentation": "baseline: the real subset; augmented: the real subset + the generated images; "
            "same steps, batch size and seed; gain = augmented - baseline accuracy on the real test split",
            "real_subset_fraction": fraction,
            "real_subset_images": int(len(subset)),
            "real_subset_seed": subset_seed,
            "real_subset": "per class round(fraction * n_c), at least 1, from the train split",
            "real_train_images": int(len(train)),
            "test_images": int(len(test)),
        },
    }


# --------------------------------------------------------------------------------------- PRDC


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _kth_radii(x: torch.Tensor, ks: Sequence[int], chunk: int) -> dict[int, torch.Tensor]:
    """Distance of each row of ``x`` to its k-th nearest other row, for each k in ``ks``."""
    kmax = max(ks)
    if len(x) <= kmax:
        raise ValueError(f"need more than {kmax} feature vectors for k={kmax}, got {len(x)}")
    parts = []
    for i in range(0, len(x), chunk):
        # k+1 smallest: the row itself (distance 0) comes first
        parts.append(_pairwise(x[i : i + chunk], x).topk(kmax + 1, dim=1, largest=False).values)
    nearest = torch.cat(parts)
    return {k: nearest[:, k] for k in ks}


def prdc_subset(features: np.ndarray, limit: int = PRDC_MAX_SAMPLES) -> np.ndarray:
    """At most ``limit`` rows of ``features``: all of them, or a fixed (seed 0) random subset in row order."""
    if len(features) <= limit:
        return features
    return features[np.sort(np.random.default_rng(0).permutation(len(features))[:limit])]


def prdc(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    pr_k: int = PRECISION_RECALL_K,
    dc_k: int = DENSITY_COVERAGE_K,
    chunk: int = 1024,
) -> dict[str, float]:
    """Precision and recall (k-NN balls of ``pr_k``) and density and coverage (``dc_k``) of ``fake``
    against ``real`` features ((N, D) arrays), as in the reference ``prdc`` code (strict ``<``).
    Distance matrices are computed ``chunk`` rows at a time (float64)."""
    r = torch.as_tensor(np.asarray(real, dtype=np.float64))
    f = torch.as_tensor(np.asarray(fake, dtype=np.float64))
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"need (N, D) feature arrays of the same D, got {tuple(r.shape)} and {tuple(f.shape)}")
    real_r = _kth_radii(r, (pr_k, dc_k), chunk)
    fake_r = _kth_radii(f, (pr_k,), chunk)[pr_k]
    in_real_pr = torch.zeros(len(f), dtype=torch.bool)
    density_count = torch.zeros(len(f), dtype=torch.float64)
    recall_hit = []
    coverage_hit = []
    for i in range(0, len(r), chunk):
        d = _pairwise(r[i : i + chunk], f)  # (chunk real, all fake)
        in_real_pr |= (d < real_r[pr_k][i : i + chunk, None]).any(dim=0)
        density_count += (d < real_r[dc_k][i : i + chunk, None]).sum(dim=0)
        recall_hit.append((d < fake_r[None, :]).any(dim=1))
        coverage_hit.append(d.min(dim=1).values < real_r[dc_k][i : i + chunk])
    return {
        "precision": float(in_real_pr.double().mean()),
        "recall": float(torch.cat(recall_hit).double().mean()),
        "density": float(density_count.mean() / dc_k),
        "coverage": float(torch.cat(coverage_hit).double().mean()),
    }


def prdc_metrics(
    real: np.ndarray, fake: np.ndarray, *, space: str, description: str, real_desc: str, fake_desc: str
) -> dict[str, Any]:
    """:func:`prdc` of at most :data:`PRDC_MAX_SAMPLES` of each (:func:`prdc_subset`) plus its ``prdc_protocol``."""
    real, fake = prdc_subset(real), prdc_subset(fake)
    out: dict[str, Any] = dict(prdc(real, fake))
    out["prdc_protocol"] = {
        "feature_space": space,
        "features": description,
        "real": real_desc,
        "real_count": int(len(real)),
        "fake": fake_desc,
        "fake_count": int(len(fake)),
        "precision_recall": f"Kynkaanniemi et al. 2019, k={PRECISION_RECALL_K}",
        "density_coverage": f"Naeem et al. 2020, k={DENSITY_COVERAGE_K}",
        "distance": "Euclidean, float64",
        "max_samples": f"{PRDC_MAX_SAMPLES} of each (seed-0 random subset beyond that)",
    }
    return out
