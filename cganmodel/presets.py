"""Every preset's defaults in one table, and the two training configs that read it.

A preset is a model family with its architecture and its training recipe. ``PRESETS`` below is the one
place their defaults live: the CLI (``cganctl submit train --preset P [--set KEY=VALUE ...]``), the job
spec, the worker's train job, the recipes under ``recipes/`` and the tests all resolve a recipe here.
Torch-free, so the control plane shows and validates a recipe at submit without loading torch.

- :class:`TrainConfig` configures :class:`cganmodel.train.Trainer` (GAN presets);
  :class:`ClassifierTrainConfig` configures :class:`cganmodel.train_classifier.ClassifierTrainer`.
  A ``None`` field takes the preset's value from ``PRESETS``.
- :func:`resolve_recipe` applies ``KEY=VALUE`` overrides (strings, as typed) to a preset's recipe and
  returns the validated, complete config as a JSON-ready dict.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Seeds are signed 64-bit in torch.Generator and numpy.
MAX_SEED = 2**63 - 1

#: DiffAugment operations (``cganmodel.diffaug`` implements them); a policy is a comma-separated subset.
DIFFAUG_OPS = ("color", "translation", "cutout")


@dataclass(frozen=True)
class Preset:
    kind: str  # what a train job of this preset produces: "generator" or "classifier"
    summary: str
    architecture: Mapping[str, Any]  # GANConfig / ClassifierConfig defaults
    recipe: Mapping[str, Any]  # TrainConfig / ClassifierTrainConfig defaults: every field


_GAN_COMMON = {
    "steps": 20_000,  # generator updates (each after n_dis discriminator updates)
    "batch_size": 64,
    "ema_decay": 0.999,  # warmed up as min(ema_decay, (1 + t) / (10 + t)) at generator update t
    "checkpoint_every": 1000,
    "seed": 0,
    "device": "auto",
    "compile": False,  # torch.compile G and D (CUDA only)
    "log_every": 10,  # progress / loss-history interval, in steps
    "samples_per_class": 8,  # columns of each checkpoint's samples.png
    # BatchNorm "standing statistics" of the exported EMA generator: its running mean/var recomputed with its
    # own weights over this many batches of batch_size random (z, y) (the EMA otherwise carries the raw G's
    # statistics, which belong to other weights); 0 keeps them as trained.
    "standing_stats": 100,
    # Learning-rate schedule: 0 keeps lr_g / lr_d constant; N > 0 holds them until generator update N, then
    # decays both linearly to 0 at `steps` (as SNGAN / Mimicry do at the end of a run).
    "lr_decay_start": 0,
}

PRESETS: dict[str, Preset] = {
    "mlp": Preset(
        kind="generator",
        summary="baseline: the Keras conditional-GAN tutorial's MLPs, BCE loss",
        architecture={"z_dim": 100, "g_widths": (256, 512, 1024), "d_widths": (512, 512, 512)},
        recipe={**_GAN_COMMON, "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999), "n_dis": 1, "diffaug": ""},
    ),
    "resnet": Preset(
        kind="generator",
        summary="CPU default: ResNet G with conditional BN, SN projection D, hinge, DiffAugment, EMA",
        architecture={"z_dim": 128, "g_widths": (256, 128, 64, 32), "d_widths": (32, 64, 128, 128)},
        recipe={**_GAN_COMMON, "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.0, 0.999), "n_dis": 2, "diffaug": "color,translation,cutout"},
    ),
    "biggan": Preset(
        kind="generator",
        summary="GPU preset: BigGAN-CIFAR layout at 128 channels (shared class embedding, hierarchical z), bf16 on CUDA",
        architecture={"z_dim": 128, "g_widths": (128, 128, 128, 128), "d_widths": (64, 128, 128, 128)},
        # DiffAugment-BigGAN-CIFAR's optimiser settings at batch 256 (not yet tuned on a GPU).
        recipe={**_GAN_COMMON, "batch_size": 256, "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.0, 0.999), "n_dis": 2, "diffaug": "color,translation,cutout"},
    ),
    "classifier": Preset(
        kind="classifier",
        summary="the scoring classifier: ResNet-9 style, SGD-Nesterov one-cycle, label smoothing, crop + flip",
        architecture={"width": 16},
        recipe={
            "steps": 4000,  # ~20 epochs of CIFAR-10 at batch 256
            "batch_size": 256,
            "lr": 0.08,  # peak of the one-cycle schedule, tuned for batch 256
            "warmup_fraction": 0.25,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "label_smoothing": 0.2,
            "checkpoint_every": 500,
            "progress_every": 25,
            "seed": 0,
            "device": "auto",
        },
    ),
}


def gan_presets() -> list[str]:
    return sorted(name for name, p in PRESETS.items() if p.kind == "generator")


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def parse_policy(policy: str) -> list[str]:
    """``"color,translation,cutout"`` -> names; ``""`` -> no augmentation. Raises ValueError."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in DIFFAUG_OPS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {unknown}; expected some of {list(DIFFAUG_OPS)}")
    return names


def _check(config: Any, checks: dict[str, tuple[bool, str]]) -> None:
    """``checks``: key -> (its value passes, the rule in words); the message names each failing key and its rule."""
    bad = [f"{k}={getattr(config, k)!r} (should be {rule})" for k, (ok, rule) in checks.items() if not ok]
    if bad:
        raise ValueError("invalid training config: " + ", ".join(bad))


def _device_ok(device: str) -> bool:
    return device in ("auto", "cpu", "cuda") or device.startswith("cuda:")


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls(**data)`` refusing unknown keys (a config read back from JSON)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**data)


@dataclass
class TrainConfig:
    """GAN training hyper-parameters; a field left ``None`` takes the preset's recipe (``PRESETS[preset].recipe``),
    so after construction every field holds a value of its annotated type.

    ``diffaug`` is a DiffAugment policy such as ``"color,translation,cutout"`` (``""`` = off).
    """

    preset: str = "resnet"
    steps: int = None  # type: ignore[assignment]
    batch_size: int = None  # type: ignore[assignment]
    lr_g: float = None  # type: ignore[assignment]
    lr_d: float = None  # type: ignore[assignment]
    betas: tuple[float, float] = None  # type: ignore[assignment]
    n_dis: int = None  # type: ignore[assignment]
    ema_decay: float = None  # type: ignore[assignment]
    diffaug: str = None  # type: ignore[assignment]
    checkpoint_every: int = None  # type: ignore[assignment]
    seed: int = None  # type: ignore[assignment]
    device: str = None  # type: ignore[assignment]
    compile: bool = None  # type: ignore[assignment]
    log_every: int = None  # type: ignore[assignment]
    samples_per_class: int = None  # type: ignore[assignment]
    standing_stats: int = None  # type: ignore[assignment]
    lr_decay_start: int = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        recipe = preset(self.preset).recipe
        if preset(self.preset).kind != "generator":
            raise ValueError(f"preset {self.preset!r} is not a GAN preset; expected one of {', '.join(gan_presets())}")
        for f in fields(self):
            if getattr(self, f.name) is None:
                setattr(self, f.name, recipe[f.name])
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        parse_policy(self.diffaug or "")
        _check(self, {
            "steps": (self.steps >= 1, "at least 1"),
            "batch_size": (self.batch_size >= 1, "at least 1"),
            "seed": (0 <= self.seed <= MAX_SEED, "0 to 2**63-1"),
            "n_dis": (1 <= self.n_dis <= 100, "1 to 100"),
            "lr_g": (0 < self.lr_g <= 1, "greater than 0, at most 1"),
            "lr_d": (0 < self.lr_d <= 1, "greater than 0, at most 1"),
            "betas": (all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)"),
            "ema_decay": (0 <= self.ema_decay < 1, "in [0, 1)"),
            "checkpoint_every": (self.checkpoint_every >= 0, "0 (none) or more"),
            "log_every": (self.log_every >= 1, "at least 1"),
            "samples_per_class": (1 <= self.samples_per_class <= 64, "1 to 64 (columns of samples.png)"),
            "standing_stats": (0 <= self.standing_stats <= 10_000, "0 to 10000 batches"),
            "lr_decay_start": (self.lr_decay_start == 0 or 0 < self.lr_decay_start < self.steps, "0 (constant) or between 0 and steps"),
            "device": (_device_ok(self.device), "auto, cpu, cuda or cuda:N"),
        })

    def lr_scale(self, step: int) -> float:
        """Factor on ``lr_g`` / ``lr_d`` for the update after ``step`` generator updates (``lr_decay_start``)."""
        if not self.lr_decay_start or step < self.lr_decay_start:
            return 1.0
        return max(0.0, (self.steps - step) / (self.steps - self.lr_decay_start))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas or ())
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        d = dict(d)
        if d.get("betas") is not None:
            d["betas"] = tuple(d["betas"])
        return config_from_dict(cls, d)


@dataclass
class ClassifierTrainConfig:
    """SGD (Nesterov) with a one-cycle (linear up, linear down) learning rate, label smoothing,
    random crop (reflect pad 4) and horizontal flip; ``None`` fields take ``PRESETS["classifier"].recipe``."""

    steps: int = None  # type: ignore[assignment]
    batch_size: int = None  # type: ignore[assignment]
    lr: float = None  # type: ignore[assignment]
    warmup_fraction: float = None  # type: ignore[assignment]
    momentum: float = None  # type: ignore[assignment]
    weight_decay: float = None  # type: ignore[assignment]
    label_smoothing: float = None  # type: ignore[assignment]
    checkpoint_every: int = None  # type: ignore[assignment]
    progress_every: int = None  # type: ignore[assignment]
    seed: int = None  # type: ignore[assignment]
    device: str = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        recipe = PRESETS["classifier"].recipe
        for f in fields(self):
            if getattr(self, f.name) is None:
                setattr(self, f.name, recipe[f.name])
        _check(self, {
            "steps": (self.steps >= 1, "at least 1"),
            "batch_size": (self.batch_size >= 1, "at least 1"),
            "seed": (0 <= self.seed <= MAX_SEED, "0 to 2**63-1"),
            "lr": (0 < self.lr <= 10, "greater than 0, at most 10"),
            "warmup_fraction": (0 <= self.warmup_fraction <= 1, "in [0, 1]"),
            "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
            "weight_decay": (0 <= self.weight_decay <= 1, "in [0, 1]"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "checkpoint_every": (self.checkpoint_every >= 1, "at least 1"),
            "progress_every": (self.progress_every >= 1, "at least 1"),
            "device": (_device_ok(self.device), "auto, cpu, cuda or cuda:N"),
        })

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassifierTrainConfig:
        return config_from_dict(cls, d)


def _number(text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(expected) from None


def _parse(key: str, text: str, default: Any) -> Any:
    """A ``--set`` value typed like the preset's default for ``key``."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            if not text.strip().lstrip("+-").isdigit():
                raise ValueError(f"expected a whole number (the preset's is {default})")
            return int(text)
        if isinstance(default, float):
            value = _number(text, f"expected a number (the preset's is {default:g})")
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("not a finite number")
            return value
        if isinstance(default, tuple):
            shape = f"expected {len(default)} comma-separated numbers (the preset's: {','.join(f'{v:g}' for v in default)})"
            parts = [_number(p, shape) for p in text.split(",")]
            if len(parts) != len(default):
                raise ValueError(shape)
            return tuple(parts)
        return text
    except ValueError as exc:
        raise ValueError(f"--set {key}={text}: {exc}") from None


def resolve_recipe(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The complete, validated training config of preset ``name`` with ``overrides`` applied.

    Override values may be strings as typed on the command line (``"1e-4"``, ``"0.0,0.9"``) or values of
    the right type. Raises ValueError naming the key for an unknown key or a bad value.
    """
    p = preset(name)
    given: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key == "preset" and value == name:  # a resolved GAN recipe names its preset
            continue
        if key not in p.recipe:
            raise ValueError(f"--set {key}: unknown key for preset {name!r}; known: {', '.join(sorted(p.recipe))}")
        given[key] = _parse(key, value, p.recipe[key]) if isinstance(value, str) else value
    if p.kind == "classifier":
        return ClassifierTrainConfig(**given).to_dict()
    return TrainConfig(preset=name, **given).to_dict()
