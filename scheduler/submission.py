"""From what a user asked for (a typed request) to a resolved, typed job spec, or one clear :class:`InvalidInput`.

The CLI builds one request dataclass per submit command; :func:`resolve` turns it into the spec a worker
runs. Bounds on single values live in the specs (pydantic) and are reported here with the flag's name;
this module checks only what needs the model registry, the settings or the dataset: labels, counts,
class lists, the per-job maximum. Nothing here writes anything.

Module level stays light (dataclasses only): ``cganctl --help`` imports it without pydantic or SQLAlchemy.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput

if TYPE_CHECKING:
    from cganmodel.dataset_index import Skipped

    from .model_registry import ModelRecord, ModelRegistry
    from .settings import Settings
    from .specs import EvaluateSpec, GenerateSpec, TrainSpec

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_MODEL = "default"
DEFAULT_CLASSIFIER = "default-classifier"


@dataclass(frozen=True)
class GenerateRequest:
    """``cganctl submit generate``: which classes (one of labels / balanced / fill_to), how many, how."""

    labels: Sequence[str] = ()
    balanced: bool = False
    count: int | None = None
    per_class: int | None = None
    fill_to: int | None = None
    dataset: str | None = None
    model: str = DEFAULT_MODEL
    seed: int = 0
    truncation: float | None = None
    min_confidence: float | None = None
    classifier: str | None = None
    format: str = "webdataset"
    shard_size: int | None = None  # None: CGAN_SHARD_SIZE


@dataclass(frozen=True)
class TrainRequest:
    """``cganctl submit train``: a preset, its data, and overrides of its recipe (``cganmodel.presets``).

    ``overrides`` holds ``--set KEY=VALUE`` pairs as typed; ``steps``/``batch_size``/``checkpoint_every``/
    ``seed`` are shortcuts for the same keys (None: the preset's value).
    """

    preset: str = "resnet"
    dataset: str = "cifar10"
    overrides: Sequence[str] = ()
    steps: int | None = None
    batch_size: int | None = None
    checkpoint_every: int | None = None
    seed: int | None = None
    name: str | None = None

    def recipe_overrides(self) -> dict[str, Any]:
        """``--set`` pairs then the shortcut flags, as one mapping; a malformed pair is an InvalidInput."""
        pairs: dict[str, Any] = {}
        for item in self.overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise InvalidInput(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr_g=1e-4")
            if key.strip() in pairs:  # one value per key: neither silently wins
                raise InvalidInput(f"--set {key.strip()}={pairs[key.strip()]} and --set {key.strip()}={value.strip()}: give one")
            pairs[key.strip()] = value.strip()
        shortcuts = dict(steps=self.steps, batch_size=self.batch_size, checkpoint_every=self.checkpoint_every, seed=self.seed)
        given = {k: v for k, v in shortcuts.items() if v is not None}
        both = sorted(set(pairs) & set(given))
        if both:  # one value per key: neither silently wins
            flag = "--" + both[0].replace("_", "-")
            raise InvalidInput(f"{flag} and --set {both[0]}={pairs[both[0]]} both set {both[0]}: give one")
        return pairs | given


@dataclass(frozen=True)
class EvaluateRequest:
    """``cganctl submit evaluate``: the generator, the scoring classifier and the reference data."""

    model: str = DEFAULT_MODEL
    classifier: str | None = None  # None: the shipped default classifier
    no_classifier: bool = False  # no classifier at all: the Inception metrics only (a one-class model, or no classifier of its classes)
    reference: str = "cifar10"
    samples_per_class: int | None = None
    reference_limit: int | None = None
    inception: bool = True
    seed: int = 0
    truncation: float | None = None
    downstream: bool = False  # also score usefulness (cganmodel.downstream): CAS, augmentation gain, PRDC
    downstream_fraction: float | None = None
    downstream_steps: int | None = None
    downstream_per_class: int | None = None
    downstream_min_confidence: float | None = None


Request = GenerateRequest | TrainRequest | EvaluateRequest


def resolve(request: Request, models: ModelRegistry, settings: Settings) -> TrainSpec | EvaluateSpec | GenerateSpec:
    """The spec for ``request``; raises :class:`InvalidInput` with the offending flag named."""
    if isinstance(request, GenerateRequest):
        return generate_spec(request, models, settings)
    if isinstance(request, TrainRequest):
        return train_spec(request, settings, models)
    return evaluate_spec(request, models, settings)


def check_queue_priority(queue: str, priority: int) -> None:
    if not QUEUE_NAME.match(queue):
        raise InvalidInput(f"invalid queue name {queue!r}: letters, digits, '_', '.', '-' only")
    if not 0 <= priority <= 9:
        raise InvalidInput(f"--priority must be between 0 (lowest) and 9 (highest), got {priority}")


def _dataset_counts(source: str, settings: Settings | None = None, flag: str = "--dataset", *, split: str = "train", require_split: bool = False,
                    shown: str | None = None, skipped: Skipped | None = None) -> dict[str, int]:
    """Images per class of a resolved source; a registered archive's from its index, an s3:// one from a local copy.
    Messages name it as ``shown`` (what the user typed: a registered name, not its ``store:`` key)."""
    from cganmodel.dataset_index import CIFAR10_CLASSES, CIFAR10_PER_CLASS, DataError, count_images, rename_hint

    shown = shown or source
    if source == "cifar10" and split in CIFAR10_PER_CLASS:  # the builtin's counts are known: nothing to download
        return {name: CIFAR10_PER_CLASS[split] for name in CIFAR10_CLASSES}
    local, indexed = _readable(source, settings)
    if indexed is not None:
        if split not in indexed:
            raise InvalidInput(f"{flag}: {shown} has no {split!r} split; found {sorted(indexed)}{rename_hint(split, indexed)}")
        return indexed[split]
    try:
        return count_images(local, split=split, limits=settings.dataset_limits() if settings is not None else None, require_split=require_split,
                            skipped=skipped)
    except DataError as exc:
        raise InvalidInput(f"{flag}: {str(exc).replace(local, shown)}") from None


def _dataset_splits(source: str, settings: Settings | None = None, flag: str = "--dataset", *, shown: str | None = None,
                    skipped: Skipped | None = None) -> dict[str, dict[str, int]]:
    """Images per class of every split of a resolved source in one reading (``dataset_index.count_splits``):
    ``train`` (the whole tree where it has no split folders) and each split folder it has."""
    from cganmodel.dataset_index import DataError, count_splits

    local, indexed = _readable(source, settings)
    if indexed is not None:
        if "train" not in indexed:  # every index written by datasets add has it
            raise InvalidInput(f"{flag}: {shown or source} has no 'train' split; found {sorted(indexed)}")
        return indexed
    try:
        return count_splits(local, limits=settings.dataset_limits() if settings is not None else None, skipped=skipped)
    except DataError as exc:
        raise InvalidInput(f"{flag}: {str(exc).replace(local, shown or source)}") from None


def _readable(source: str, settings: Settings | None) -> tuple[str, dict[str, dict[str, int]] | None]:
    """What to read for a resolved source: a registered archive's index of splits (nothing to read), else a
    local path (an s3:// source's local copy)."""
    from . import datasets

    if settings is not None and source.startswith(datasets.STORE_SCHEME):
        from .store import open_store

        store = open_store(settings)
        indexed = datasets.indexed_splits(source, store)
        if indexed is not None:
            return source, indexed
        return str(datasets.local_copy(source, settings, store)), None
    return source, None


def _source(source: str, settings: Settings | None, flag: str) -> str:
    from .dataset_access import resolve, resolve_source

    if settings is None:
        return resolve_source(source, None, flag=flag)
    return resolve(source, settings, flag=flag)


def _even_split(total: int, names: list[str]) -> dict[str, int]:
    base, extra = divmod(total, len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}


def _model_class(name: str, classes: list[str]) -> str | None:
    """The model's class that ``name`` spells, in either Unicode form (a folder name made on macOS is
    decomposed, NFD: ``é`` as ``e`` + accent; typed, it is composed, NFC)."""
    import unicodedata

    if name in classes:
        return name
    key = unicodedata.normalize("NFC", name)
    return next((c for c in classes if unicodedata.normalize("NFC", c) == key), None)


def _counts(r: GenerateRequest, classes: list[str], model_ref: str, settings: Settings | None = None) -> dict[str, int]:
    """Images per class name, in the model's class order."""
    if r.fill_to is not None:
        if r.count is not None or r.per_class is not None:
            raise InvalidInput("--fill-to computes the counts itself: drop --count/--per-class")
        if r.fill_to <= 0:
            raise InvalidInput(f"--fill-to must be at least 1, got {r.fill_to}")
        if not r.dataset:
            raise InvalidInput("--fill-to needs --dataset PATH (an ImageFolder directory or a .tar/.tar.gz of one)")
        found = _dataset_counts(_source(r.dataset, settings, "--dataset"), settings, shown=r.dataset)
        have = {_model_class(name, classes) or name: n for name, n in found.items()}
        unknown = sorted(set(have) - set(classes))
        if unknown:
            raise InvalidInput(f"dataset {r.dataset} has classes unknown to model {model_ref}: {', '.join(unknown)}; valid labels: {', '.join(classes)}")
        # the dataset's own classes: a class it does not have is not topped up (the model may know more)
        counts = {name: max(r.fill_to - have[name], 0) for name in classes if name in have}
        if sum(counts.values()) == 0:
            raise InvalidInput(f"nothing to generate: every class of {r.dataset} already has {r.fill_to} images or more")
        return counts
    if r.dataset:
        raise InvalidInput("--dataset goes with --fill-to")
    if (r.count is None) == (r.per_class is None):
        raise InvalidInput("give exactly one of --count (total) or --per-class")
    labels = list(dict.fromkeys(_model_class(name, classes) or name for name in r.labels))
    unknown = [name for name in labels if name not in classes]
    if unknown:
        raise InvalidInput(f"unknown label {unknown[0]!r} for model {model_ref}; valid labels: {', '.join(classes)}")
    names = [c for c in classes if c in labels] if labels else classes  # the model's order, whatever the flags' order
    flag, amount = ("--count", r.count) if r.count is not None else ("--per-class", r.per_class)
    if amount is None or amount <= 0:
        raise InvalidInput(f"{flag} must be at least 1, got {amount}")
    if r.count is not None and amount < len(names):
        raise InvalidInput(f"--count {amount} is smaller than the number of classes ({len(names)})")
    counts = _even_split(amount, names) if r.count is not None else {name: amount for name in names}
    return {name: counts[name] for name in classes if name in counts}


def generate_spec(r: GenerateRequest, models: ModelRegistry, settings: Settings) -> GenerateSpec:
    from .specs import GenerateSpec

    chosen = [flag for flag, given in (("--label", bool(r.labels)), ("--balanced", r.balanced), ("--fill-to", r.fill_to is not None)) if given]
    if len(chosen) > 1:
        raise InvalidInput(f"{' and '.join(chosen)} conflict: choose one of --label, --balanced or --fill-to")
    if not chosen:
        raise InvalidInput("say which classes to generate: --label NAME (repeatable), --balanced, or --fill-to N --dataset PATH")
    generator = models.resolve(r.model, "generator")
    classes: list[str] = list(generator.meta["classes"])
    counts = _counts(r, classes, generator.ref, settings)
    total = sum(counts.values())
    if total > settings.max_count:
        raise InvalidInput(f"{total} images is above the maximum of {settings.max_count} per job (CGAN_MAX_COUNT)")
    if r.shard_size is not None and 0 < r.shard_size < min(settings.min_shard_size, total):
        raise InvalidInput(
            f"--shard-size {r.shard_size} is below the minimum of {min(settings.min_shard_size, total)} images per shard (CGAN_MIN_SHARD_SIZE)"
        )
    classifier_ref = None
    _below_one(r.min_confidence, "--min-confidence")
    if r.classifier is not None and r.min_confidence is None:
        raise InvalidInput("--classifier goes with --min-confidence (it scores the samples that filter keeps)")
    if r.min_confidence is not None:
        scorer = models.resolve(r.classifier or DEFAULT_CLASSIFIER, "classifier")
        _check_scorer(scorer, generator)
        classifier_ref = scorer.ref
    as_given = dict(
        labels=list(dict.fromkeys(r.labels)) or None, balanced=r.balanced or None, count=r.count, per_class=r.per_class,
        fill_to=r.fill_to, dataset=_source(r.dataset, settings, "--dataset") if r.dataset else None, model=r.model, min_confidence=r.min_confidence, classifier=r.classifier,
    )
    spec = build(
        GenerateSpec,
        model=generator.ref, counts=counts, seed=r.seed, truncation=r.truncation, min_confidence=r.min_confidence,
        classifier=classifier_ref, format=r.format, shard_size=settings.shard_size if r.shard_size is None else r.shard_size,
        request={k: v for k, v in as_given.items() if v is not None},
    )
    if r.fill_to is not None:
        spec._absent = [name for name in classes if name not in counts]
    return spec


RESERVED_NAMES = (DEFAULT_MODEL, DEFAULT_CLASSIFIER)


def check_train_budget(recipe: dict[str, Any], settings: Settings | None) -> None:
    """Seeds, steps and checkpoint spacing within what one train job may cost (settings, README "Security")."""
    from .specs import MAX_SEED

    max_steps = settings.max_steps if settings is not None else 10_000_000
    max_checkpoints = settings.max_checkpoints if settings is not None else 1000
    seed, steps, every = recipe.get("seed", 0), int(recipe["steps"]), int(recipe.get("checkpoint_every") or 0)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"invalid --seed {seed}: should be between 0 and 2**63-1")
    if steps > max_steps:
        raise InvalidInput(f"--steps {steps} is above the maximum of {max_steps} (CGAN_MAX_STEPS)")
    least = -(-steps // max_checkpoints)
    if every and every < least:
        raise InvalidInput(
            f"--checkpoint-every {every} would write more than {max_checkpoints} checkpoints; use at least {least} (CGAN_MAX_CHECKPOINTS)"
        )


def train_spec(r: TrainRequest, settings: Settings | None = None, models: ModelRegistry | None = None) -> TrainSpec:
    from cganmodel.presets import preset, resolve_recipe

    from .specs import TrainSpec

    if r.name is not None and r.name.lower() in RESERVED_NAMES:
        raise InvalidInput(f"--name {r.name} is reserved for a shipped model; choose another name")
    try:
        recipe = resolve_recipe(r.preset, r.recipe_overrides())
    except ValueError as exc:
        text = str(exc)
        shortcuts = [f"--{k.replace('_', '-')}: " for k in ("steps", "batch_size", "checkpoint_every", "seed") if getattr(r, k) is not None and f"{k}=" in text]
        flag = shortcuts[0] if shortcuts else ("" if text.startswith("--set") else "--preset/--set: ")
        raise InvalidInput(f"{flag}{text}") from None
    if int(recipe["batch_size"]) < 2:  # refused at submit (rows written before this rule still parse)
        flag = "--batch-size" if r.batch_size is not None else "--set batch_size"
        raise InvalidInput(f"{flag}: batch_size={recipe['batch_size']} is too small (should be at least 2: BatchNorm needs more than one image a batch)")
    check_train_budget(recipe, settings)
    dataset = _source(r.dataset, settings, "--dataset")
    spec = build(TrainSpec, preset=r.preset, dataset=dataset, recipe=recipe, name=r.name)
    if spec.dataset != "cifar10":
        from cganmodel.dataset_index import Skipped

        skipped = Skipped()
        splits = _dataset_splits(spec.dataset, settings, shown=r.dataset, skipped=skipped)  # readable and indexable now, not only on the worker
        per_class = splits["train"]
        spec._found, spec._notes = per_class, skipped.notes()
        found = sum(per_class.values())
        if len(per_class) < 2 and preset(r.preset).kind == "classifier":  # nothing to tell apart (a GAN of one class is fine)
            raise InvalidInput(f"--dataset {r.dataset} has {len(per_class)} class ({', '.join(per_class)}): a classifier needs at least 2 class folders")
        if preset(r.preset).kind == "classifier":  # the job scores it on the test split: by class name
            _check_classifier_test_split(r.dataset, splits.get("test"), per_class)
        if found < int(recipe.get("batch_size") or 1):
            raise InvalidInput(f"--dataset {r.dataset} has {found} images, fewer than the batch size {recipe['batch_size']} (--batch-size / --set batch_size=N)")
    return spec


def _check_classifier_test_split(given: str, test: dict[str, int] | None, train: dict[str, int]) -> None:
    """A test split (where the dataset has one) may lack some of the train split's classes, not add others."""
    from .datasets import classes_only_in_test

    if test is None:
        return  # no test split: the job reports no test accuracy
    extra = classes_only_in_test({"train": train, "test": test})
    if extra:
        raise InvalidInput(f"--dataset {given}: its test split has classes the train split lacks ({', '.join(extra)}): the classifier could not score them")


def _check_scorer(scorer: ModelRecord, generator: ModelRecord) -> None:
    """A classifier scores a generator's samples by class index: it must know the generator's classes, in its order."""
    if len(generator.meta["classes"]) < 2:
        raise InvalidInput(f"model {generator.ref} has one class: a classifier has nothing to tell it from, so it cannot be scored or filtered "
                           "(generate from it without --min-confidence; evaluate it with --no-classifier, the Inception metrics only)")
    if list(scorer.meta["classes"]) != list(generator.meta["classes"]):
        raise InvalidInput(f"classifier {scorer.ref} was trained on other classes than model {generator.ref}: pass --classifier with one "
                           "trained on the model's classes (cganctl submit train --preset classifier --dataset ...), or evaluate with "
                           "--no-classifier (the Inception metrics only)")


def _below_one(value: float | None, flag: str) -> None:
    """A confidence threshold of 1 is never reached (the classifier's probabilities stay below it): refused at
    submit. (Specs keep accepting 1 so that rows written before this rule still parse.)"""
    if value is not None and value >= 1:
        raise InvalidInput(f"invalid {flag} {value}: should be less than 1 (a probability of exactly 1 is never reached)")


def evaluate_spec(r: EvaluateRequest, models: ModelRegistry, settings: Settings | None = None) -> EvaluateSpec:
    from .specs import EvaluateSpec

    _below_one(r.downstream_min_confidence, "--downstream-min-confidence")

    generator = models.resolve(r.model, "generator")
    scorer = None if r.no_classifier else models.resolve(r.classifier or DEFAULT_CLASSIFIER, "classifier")
    if r.no_classifier:
        if r.classifier is not None:
            raise InvalidInput("--classifier and --no-classifier exclude each other")
        if not r.inception:
            raise InvalidInput("--no-classifier with --no-inception leaves nothing to measure")
        if r.downstream:
            raise InvalidInput("--downstream needs the scoring classifier (it filters the generated images and measures in its feature space): drop --no-classifier")
    else:
        assert scorer is not None
        _check_scorer(scorer, generator)
    downstream = dict(downstream_fraction=r.downstream_fraction, downstream_steps=r.downstream_steps,
                      downstream_per_class=r.downstream_per_class, downstream_min_confidence=r.downstream_min_confidence)
    extra = [k for k, v in downstream.items() if v is not None]
    if extra and not r.downstream:
        raise InvalidInput(f"--{extra[0].replace('_', '-')} goes with --downstream")
    reference = _source(r.reference, settings, "--reference")
    spec = build(EvaluateSpec, model=generator.ref, classifier=scorer.ref if scorer else None, reference=reference, samples_per_class=r.samples_per_class,
                 reference_limit=r.reference_limit, inception=r.inception, seed=r.seed, truncation=r.truncation,
                 downstream=r.downstream or None, **downstream)
    from cganmodel.dataset_index import CIFAR10_CLASSES

    found = list(CIFAR10_CLASSES) if spec.reference == "cifar10" else list(_dataset_counts(spec.reference, settings, "--reference", shown=r.reference))
    if found != list(generator.meta["classes"]):
        raise InvalidInput(
            f"reference {r.reference} has classes {', '.join(found)}; model {generator.ref} has {', '.join(generator.meta['classes'])}"
            + (" (pass --reference with the dataset the model was trained on)" if spec.reference == "cifar10" else "")
        )
    if spec.reference != "cifar10":
        if spec.downstream:
            _check_test_split(spec.reference, list(generator.meta["classes"]), settings, shown=r.reference)
    return spec


def _check_test_split(reference: str, classes: list[str], settings: Settings | None, *, shown: str) -> None:
    """``--downstream`` tests classifiers on the reference's real test split: it must exist, same classes."""
    try:
        found = list(_dataset_counts(reference, settings, "--reference", split="test", require_split=True, shown=shown))
    except InvalidInput as exc:
        raise InvalidInput(f"--downstream needs a reference with a test split: {str(exc).removeprefix('--reference: ')}") from None
    if found != classes:
        raise InvalidInput(f"the test split of {shown} has classes {', '.join(found)}; the model has {', '.join(classes)}")


def build(cls: type, **fields: Any) -> Any:
    """``cls(**fields)`` without the ``None`` ones (the spec's defaults apply); a validation error becomes
    one :class:`InvalidInput` naming the flag, the value and the rule, e.g. ``invalid --seed -1: ...``."""
    from pydantic import ValidationError

    given = {k: v for k, v in fields.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        rule = first["msg"].removeprefix("Value error, ").replace("Input should be", "should be")
        if name in given and name not in ("counts", "request"):
            raise InvalidInput(f"invalid --{name.replace('_', '-')} {given[name]!r}: {rule}") from None
        raise InvalidInput(f"invalid {cls.__name__}: {rule}") from None
