"""From what a user typed to a resolved, typed job spec, or one clear :class:`InvalidInput`.

Nothing here writes anything: the service only creates a job row for a spec that resolved.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import InvalidInput
from .jobs import JobTable
from .model_registry import resolve
from .settings import Settings
from .specs import OUTPUT_FORMATS, EvaluateSpec, GenerateSpec, TrainSpec

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_CLASSIFIER = "default-classifier"


def check_queue_priority(queue: str, priority: int) -> None:
    if not QUEUE_NAME.match(queue):
        raise InvalidInput(f"invalid queue name {queue!r}: letters, digits, '_', '.', '-' only")
    if not 0 <= priority <= 9:
        raise InvalidInput(f"--priority must be between 0 (lowest) and 9 (highest), got {priority}")


def _check_dataset(source: str) -> None:
    if source != "cifar10" and not Path(source).expanduser().exists():
        raise InvalidInput(f"dataset {source} does not exist (use cifar10, an ImageFolder directory or a .tar/.tar.gz of one)")


def _dataset_counts(source: str) -> dict[str, int]:
    from cganmodel.dataset_index import DataError, count_images

    try:
        return count_images(source)
    except DataError as exc:
        raise InvalidInput(f"cannot use --dataset {exc}") from None


def _even_split(total: int, names: list[str]) -> dict[str, int]:
    base, extra = divmod(total, len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}


def generate_spec(
    table: JobTable,
    settings: Settings,
    *,
    labels: list[str] | None = None,
    balanced: bool = False,
    count: int | None = None,
    per_class: int | None = None,
    fill_to: int | None = None,
    dataset: str | None = None,
    model: str = "default",
    seed: int = 0,
    truncation: float | None = None,
    min_confidence: float | None = None,
    classifier: str | None = None,
    format: str = "webdataset",
    shard_size: int | None = None,
) -> GenerateSpec:
    labels = list(dict.fromkeys(labels or []))
    chosen = [name for name, given in (("--label", bool(labels)), ("--balanced", balanced), ("--fill-to", fill_to is not None)) if given]
    if len(chosen) > 1:
        raise InvalidInput(f"{' and '.join(chosen)} conflict: choose one of --label, --balanced or --fill-to")
    if not chosen:
        raise InvalidInput("say which classes to generate: --label NAME (repeatable), --balanced, or --fill-to N --dataset PATH")
    if format not in OUTPUT_FORMATS:
        raise InvalidInput(f"unknown format {format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if min_confidence is not None and not 0 < min_confidence <= 1:
        raise InvalidInput(f"--min-confidence must be in (0, 1], got {min_confidence}")
    if truncation is not None and truncation <= 0:
        raise InvalidInput(f"--truncation must be positive, got {truncation}")
    if seed < 0:
        raise InvalidInput(f"--seed must be non-negative, got {seed}")
    shard_size = settings.shard_size if shard_size is None else shard_size
    if not 0 < shard_size <= 100_000:
        raise InvalidInput(f"--shard-size must be between 1 and 100000, got {shard_size}")

    generator = resolve(table, model, "generator")
    classes: list[str] = list(generator.meta["classes"])

    if fill_to is not None:
        if count is not None or per_class is not None:
            raise InvalidInput("--fill-to computes the counts itself: drop --count/--per-class")
        if fill_to <= 0:
            raise InvalidInput(f"--fill-to must be at least 1, got {fill_to}")
        if not dataset:
            raise InvalidInput("--fill-to needs --dataset PATH (an ImageFolder directory or a .tar/.tar.gz of one)")
        have = _dataset_counts(dataset)
        unknown = sorted(set(have) - set(classes))
        if unknown:
            raise InvalidInput(f"dataset {dataset} has classes unknown to model {generator.ref}: {', '.join(unknown)}; valid labels: {', '.join(classes)}")
        counts = {name: max(fill_to - have.get(name, 0), 0) for name in classes}
        if sum(counts.values()) == 0:
            raise InvalidInput(f"nothing to generate: every class of {dataset} already has {fill_to} images or more")
    else:
        if dataset:
            raise InvalidInput("--dataset goes with --fill-to")
        if (count is None) == (per_class is None):
            raise InvalidInput("give exactly one of --count (total) or --per-class")
        unknown = [name for name in labels if name not in classes]
        if unknown:
            raise InvalidInput(f"unknown label {unknown[0]!r} for model {generator.ref}; valid labels: {', '.join(classes)}")
        names = labels or classes
        amount = count if count is not None else per_class
        flag = "--count" if count is not None else "--per-class"
        if amount is None or amount <= 0:
            raise InvalidInput(f"{flag} must be at least 1, got {amount}")
        counts = _even_split(amount, names) if count is not None else {name: amount for name in names}
        if count is not None and amount < len(names):
            raise InvalidInput(f"--count {amount} is smaller than the number of classes ({len(names)})")
        counts = {name: counts.get(name, 0) for name in classes if name in counts}

    total = sum(counts.values())
    if total > settings.max_count:
        raise InvalidInput(f"{total} images is above the maximum of {settings.max_count} per job (CGAN_MAX_COUNT)")

    classifier_ref = None
    if min_confidence is not None:
        scorer = resolve(table, classifier or DEFAULT_CLASSIFIER, "classifier")
        if list(scorer.meta["classes"]) != classes:
            raise InvalidInput(f"classifier {scorer.ref} was trained on other classes than model {generator.ref}")
        classifier_ref = scorer.ref
    request = {
        k: v
        for k, v in dict(
            labels=labels or None, balanced=balanced or None, count=count, per_class=per_class, fill_to=fill_to,
            dataset=dataset, model=model, min_confidence=min_confidence, classifier=classifier,
        ).items()
        if v is not None
    }
    return GenerateSpec(
        model=generator.ref, counts=counts, seed=seed, truncation=truncation, min_confidence=min_confidence,
        classifier=classifier_ref, format=format, shard_size=shard_size, request=request,
    )


def train_spec(**options) -> TrainSpec:
    spec = _build(TrainSpec, options)
    _check_dataset(spec.dataset)
    return spec


def evaluate_spec(table: JobTable, *, model: str, classifier: str | None, **options) -> EvaluateSpec:
    generator = resolve(table, model, "generator")
    scorer = resolve(table, classifier or DEFAULT_CLASSIFIER, "classifier")
    if list(scorer.meta["classes"]) != list(generator.meta["classes"]):
        raise InvalidInput(f"classifier {scorer.ref} was trained on other classes than model {generator.ref}")
    extra = [k for k, v in options.items() if k.startswith("downstream_") and v is not None]
    if extra and not options.get("downstream"):
        raise InvalidInput(f"--{extra[0].replace('_', '-')} goes with --downstream")
    spec = _build(EvaluateSpec, dict(options, model=generator.ref, classifier=scorer.ref))
    if spec.reference != "cifar10":
        found = list(_dataset_counts(spec.reference))
        if found != list(generator.meta["classes"]):
            raise InvalidInput(
                f"reference {spec.reference} has classes {', '.join(found)}; model {generator.ref} has {', '.join(generator.meta['classes'])}"
            )
        if spec.downstream:
            _check_test_split(spec.reference, list(generator.meta["classes"]))
    return spec


def _check_test_split(reference: str, classes: list[str]) -> None:
    """``--downstream`` tests classifiers on the reference's real test split: it must exist, same classes."""
    from cganmodel.dataset_index import DataError, count_images

    try:
        found = list(count_images(reference, split="test", require_split=True))
    except DataError as exc:
        raise InvalidInput(f"--downstream needs a reference with a test split: {exc}") from None
    if found != classes:
        raise InvalidInput(f"the test split of {reference} has classes {', '.join(found)}; the model has {', '.join(classes)}")


def _build(cls, options: dict):
    from pydantic import ValidationError

    try:
        return cls(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or cls.__name__
        raise InvalidInput(f"invalid {where.replace('_', '-')}: {first['msg']}") from None
