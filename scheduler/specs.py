"""Typed job specs shared by the CLI, the job table and the workers (JSON on the wire and in the table).

A spec is what the user asked for, already resolved into everything a worker needs: a generate spec
carries the exact image count per class and the concrete model version, so a worker never re-reads the
user's dataset or re-resolves ``latest``.
"""
from __future__ import annotations

import enum
import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, field_validator, model_validator

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # what `submit train --name` may register


class JobKind(str, enum.Enum):
    train = "train"
    evaluate = "evaluate"
    generate = "generate"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class ShardStatus(str, enum.Enum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


SHARD_FINAL = (ShardStatus.succeeded.value, ShardStatus.failed.value, ShardStatus.cancelled.value)
MIN_TRUNCATION = 0.05  # the lower bound of every spec's truncation (ge=): ~300 noise redraw rounds at most
Truncation = Annotated[float | None, Field(
    ge=MIN_TRUNCATION, allow_inf_nan=False,
    description="noise magnitude cut-off (cganmodel.sampling.sample_noise); at least MIN_TRUNCATION (smaller values need unbounded redraws)",
)]
FINISHED = tuple(s.value for s in JobStatus if s.finished)
from cganmodel.presets import MAX_SEED  # noqa: E402  (seeds are signed 64-bit in torch.Generator / numpy)

OUTPUT_FORMATS = ("webdataset", "imagefolder", "npz")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSpec(_Spec):
    kind: Literal["train"] = "train"
    preset: str = "resnet"
    dataset: str = Field("cifar10", description="cifar10, an ImageFolder directory or a .tar/.tar.gz of one")
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="the complete training config, resolved at submit from the preset's defaults and the overrides "
        "(cganmodel.presets.resolve_recipe); empty: the preset's defaults",
    )
    name: str | None = Field(None, description="model name to register")
    resume_from: str | None = Field(None, description="job id whose latest checkpoint starts this run")
    # what the submit found in the dataset (images per class), for its own output; never stored
    _found: dict[str, int] | None = PrivateAttr(default=None)
    _notes: list[str] = PrivateAttr(default_factory=list)  # what the reading passed over (dataset_index.Skipped), said at submit

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_NAME.match(value):
            raise ValueError("a model name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @model_validator(mode="before")
    @classmethod
    def _recipe_of_older_rows(cls, data: Any) -> Any:
        """Rows written before recipes: steps / batch_size / checkpoint_every / seed stood beside the preset."""
        if isinstance(data, dict) and any(k in data for k in _PRE_RECIPE_KEYS):
            data = dict(data)
            data["recipe"] = {**{k: data.pop(k) for k in _PRE_RECIPE_KEYS if k in data}, **data.get("recipe", {})}
        return data

    @model_validator(mode="after")
    def _complete_recipe(self) -> "TrainSpec":
        from cganmodel.presets import resolve_recipe

        object.__setattr__(self, "recipe", resolve_recipe(self.preset, self.recipe))
        return self

    @property
    def steps(self) -> int:
        return int(self.recipe["steps"])

    @property
    def model_name(self) -> str:
        return self.name or ("classifier" if self.preset == "classifier" else f"{self.preset}-gan")


_PRE_RECIPE_KEYS = ("steps", "batch_size", "checkpoint_every", "seed")


class EvaluateSpec(_Spec):
    kind: Literal["evaluate"] = "evaluate"
    model: str = Field(..., description="NAME:VERSION of a generator, resolved at submit")
    classifier: str | None = Field(None, description="NAME:VERSION of the scoring classifier, resolved at submit; None (--no-classifier): the Inception metrics only")
    reference: str = Field("cifar10", description="dataset whose statistics FID compares against")
    samples_per_class: int = Field(5000, ge=2, le=100_000, description="at least 2: FID and intra-FID need a covariance")
    reference_limit: int | None = Field(None, ge=10, description="use at most this many reference images; at least 10 (a covariance; 5 nearest neighbours for PRDC)")
    inception: bool = True
    seed: int = Field(0, ge=0, le=MAX_SEED)
    truncation: Truncation = Field(None, description="sample the evaluation and downstream images at this truncation, as a generate job would")
    downstream: bool = Field(False, description="also score usefulness: CAS, augmentation gain, PRDC")
    downstream_fraction: float = Field(0.1, gt=0, le=1, description="fraction of the real train split in the augmentation baseline")
    downstream_steps: int = Field(400, gt=0, le=200_000, description="optimiser steps of every downstream classifier")
    downstream_per_class: int = Field(500, gt=0, le=50_000, description="generated training images per class")
    downstream_min_confidence: float | None = Field(None, gt=0, le=1, description="keep generated training images the scoring classifier gives their label with p >= P")

    @model_validator(mode="after")
    def _something_to_score(self) -> "EvaluateSpec":
        if self.classifier is None and not self.inception:
            raise ValueError("an evaluation without a classifier needs Inception: nothing would be measured")
        if self.classifier is None and self.downstream:
            raise ValueError("downstream scoring needs the classifier")
        return self


class GenerateSpec(_Spec):
    kind: Literal["generate"] = "generate"
    model: str = Field(..., description="NAME:VERSION, resolved at submit")
    counts: dict[str, int] = Field(..., description="images per class name, kept sorted by name: the model's class order (ImageFolder sorts its classes)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    truncation: Truncation = None
    min_confidence: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="a submit asks for less than 1 (never reached)")
    classifier: str | None = Field(None, description="NAME:VERSION used with min_confidence")
    format: Literal["webdataset", "imagefolder", "npz"] = "webdataset"
    shard_size: int = Field(2500, gt=0, le=100_000)
    request: dict = Field(default_factory=dict, description="the options as the user gave them, for the record")
    # --fill-to: the model's classes the dataset has no image of (not filled), for the submit's warning; never stored
    _absent: list[str] = PrivateAttr(default_factory=list)

    @field_validator("counts")
    @classmethod
    def _positive_counts(cls, counts: dict[str, int]) -> dict[str, int]:
        if not counts or any(n < 0 for n in counts.values()) or sum(counts.values()) <= 0:
            raise ValueError("counts must be non-negative and add up to at least 1")
        # One order whatever the table kept: PostgreSQL's JSONB reorders an object's keys (by length), and
        # the shard plan breaks ties by class order, so the same spec must plan the same shards everywhere.
        return dict(sorted(counts.items()))

    @model_validator(mode="after")
    def _classifier_with_confidence(self) -> "GenerateSpec":
        if self.min_confidence is not None and self.classifier is None:
            raise ValueError("min_confidence needs a classifier")
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def num_shards(self) -> int:
        return math.ceil(self.total / self.shard_size)

    def shard_labels(self, index: int) -> list[str]:
        """Class name of every image of one shard.

        Classes are interleaved so that each shard holds a proportional mix: image ``j`` of class ``c``
        sits at fractional position ``(j + 0.5) / n_c`` of the job, ties broken by class order. A pure
        function of the spec; numpy keeps it fast for a million images.
        """
        import numpy as np

        names = list(self.counts)
        sizes = [self.counts[name] for name in names]
        position = np.concatenate([(np.arange(n) + 0.5) / n for n in sizes if n])
        klass = np.concatenate([np.full(n, i) for i, n in enumerate(sizes) if n])
        order = np.lexsort((klass, position))
        start, end = self.shard_range(index)
        return [names[i] for i in klass[order[start:end]]]

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.total)

    def shard_seed(self, index: int) -> int:
        """The noise seed of one shard: a pure function of the job seed and the shard index."""
        from cganmodel.seeding import shard_seed

        return shard_seed(self.seed, index)


JobSpec = Annotated[Union[TrainSpec, EvaluateSpec, GenerateSpec], Field(discriminator="kind")]
_spec_adapter: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def parse_spec(data: dict | str) -> TrainSpec | EvaluateSpec | GenerateSpec:
    if isinstance(data, str):
        return _spec_adapter.validate_json(data)
    return _spec_adapter.validate_python(data)
