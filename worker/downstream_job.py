"""The ``--downstream`` part of an evaluate job: is the generated set useful for training classifiers?

CAS and augmentation gain (fresh classifiers trained on generated images, tested on the reference's
real test split) and precision/recall/density/coverage in the evaluate job's own feature space
(Inception when it is on, else the scoring classifier's penultimate features). The metric code is
:mod:`cganmodel.downstream`; this module fetches the data and states the protocol.
"""
from __future__ import annotations

from collections.abc import Callable

from scheduler.specs import EvaluateSpec

from . import models
from .context import JobContext


def downstream(
    ctx: JobContext,
    spec: EvaluateSpec,
    generator: models.LoadedModel,
    classifier: models.LoadedModel,
    classes: list[str],
    reference_features: dict,
    generated_features: dict,
    progress: Callable[[dict], None],
) -> dict:
    import numpy as np

    from cganmodel.downstream import downstream_metrics, prdc_metrics
    from cganmodel.fid import InceptionFeatures
    from cganmodel.sampling import generate
    from cganmodel.seeding import DOWNSTREAM_STREAMS, mix_seed

    train = ctx.load_dataset(spec.reference, "train")  # this worker's roots, file system and budgets
    test = ctx.load_dataset(spec.reference, "test")
    for split, data in (("train", train), ("test", test)):
        if list(data.classes) != classes:
            raise ValueError(f"the {split} split of {spec.reference} has classes {data.classes}, the model has {classes}")

    seed = mix_seed(spec.seed, DOWNSTREAM_STREAMS["generated"])
    labels = np.repeat(np.arange(len(classes)), spec.downstream_per_class)
    filtering = spec.downstream_min_confidence is not None
    made = generate(
        generator.module,
        labels.tolist(),
        seed,
        truncation=spec.truncation,
        classifier=classifier.module if filtering else None,
        min_confidence=spec.downstream_min_confidence,
        device=generator.device,
        on_batch=lambda n: progress({"stage": "downstream/generate", "done": n, "total": len(labels)}),
        class_names=classes,
    )
    metrics = downstream_metrics(
        made.images,
        made.labels,
        train,
        test,
        fraction=spec.downstream_fraction,
        steps=spec.downstream_steps,
        seed=spec.seed,
        device=generator.device,
        on_progress=progress,
    )
    generated = sum(s["generated"] for s in made.stats.values())
    metrics["downstream_protocol"].update(
        reference=spec.reference,
        generated_noise_seed=seed,
        truncation=spec.truncation,
        min_confidence=spec.downstream_min_confidence,
        filter=(
            f"kept generated images the scoring classifier {spec.classifier} gives their label with "
            f"p >= {spec.downstream_min_confidence} ({len(labels)} kept of {generated} drawn)"
            if filtering
            else "none (every generated image is used)"
        ),
    )

    space = "inception" if spec.inception else "classifier"
    description = (
        InceptionFeatures.description
        if space == "inception"
        else f"penultimate features of the scoring classifier {spec.classifier}"
    )
    real, fake = reference_features[space], generated_features[space]
    metrics.update(
        prdc_metrics(
            real,
            fake,
            space=space,
            description=description,
            real_desc=f"the FID reference images: train split of {spec.reference}"
            + (f", a seed-0 subset of {spec.reference_limit}" if spec.reference_limit else ""),
            fake_desc=f"the evaluation samples: {spec.samples_per_class} a class, seed {spec.seed}"
            + (f", noise truncated at {spec.truncation:g}" if spec.truncation is not None else ""),
        )
    )
    return metrics
