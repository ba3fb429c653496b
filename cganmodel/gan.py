"""GAN configuration and model builders.

A :class:`GANConfig` fully determines the architecture (and therefore every tensor shape) of a
generator/discriminator pair; it is stored with every checkpoint and exported generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from cganmodel import presets

#: Architecture defaults of the GAN presets (a view of ``cganmodel.presets.PRESETS``).
PRESETS: dict[str, Any] = {name: p.architecture for name, p in presets.PRESETS.items() if p.kind == "generator"}

@dataclass
class GANConfig:
    """Architecture of a class-conditional GAN. ``None`` fields take the preset's (``cganmodel.presets.PRESETS``)."""

    preset: str = "resnet"
    num_classes: int = 10
    classes: list[str] = field(default_factory=list)
    image_size: int = 32
    z_dim: int = None  # type: ignore[assignment]  # None: the preset's
    g_widths: tuple[int, ...] = None  # type: ignore[assignment]  # None: the preset's
    d_widths: tuple[int, ...] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {sorted(PRESETS)}")
        defaults = PRESETS[self.preset]
        if self.z_dim is None:
            self.z_dim = defaults["z_dim"]
        self.g_widths = tuple(defaults["g_widths"] if self.g_widths is None else self.g_widths)
        self.d_widths = tuple(defaults["d_widths"] if self.d_widths is None else self.d_widths)
        if not self.classes:
            self.classes = [str(i) for i in range(self.num_classes)]
        self.classes = [str(c) for c in self.classes]
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names given for num_classes={self.num_classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        if not isinstance(self.z_dim, int) or self.z_dim < 1:
            raise ValueError(f"z_dim must be a positive integer, got {self.z_dim!r}")
        for name in ("g_widths", "d_widths"):
            widths = getattr(self, name)
            if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {widths!r}")
        if not isinstance(self.image_size, int) or self.image_size < 4:
            raise ValueError(f"image_size must be an integer >= 4, got {self.image_size!r}")
        if self.preset in ("resnet", "biggan"):
            expected = 4 * 2 ** (len(self.g_widths) - 1)
            if self.image_size != expected:
                raise ValueError(
                    f"{self.preset} generator with {len(self.g_widths)} widths makes {expected}x{expected} "
                    f"images, not {self.image_size}x{self.image_size}"
                )
            if len(self.d_widths) < 2:
                raise ValueError(f"{self.preset} discriminator needs at least 2 widths")
        if self.preset == "biggan" and self.z_dim < len(self.g_widths):
            raise ValueError(f"biggan needs z_dim >= {len(self.g_widths)} (one latent chunk per block)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["g_widths"] = list(self.g_widths or ())
        d["d_widths"] = list(self.d_widths or ())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GANConfig:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on unknown keys or invalid values."""
        if not isinstance(d, dict):
            raise ValueError(f"GAN config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GAN config keys: {unknown}")
        d = dict(d)
        for key in ("g_widths", "d_widths"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def build_generator(cfg: GANConfig) -> nn.Module:
    """``G(z: (N, z_dim) float, y: (N,) long) -> (N, 3, H, W)`` in [-1, 1]."""
    if cfg.preset == "mlp":
        from cganmodel.nets.mlp import MLPGenerator

        return MLPGenerator(cfg)
    if cfg.preset == "biggan":
        from cganmodel.nets.biggan import BigGANGenerator

        return BigGANGenerator(cfg)
    from cganmodel.nets.resnet import ResNetGenerator

    return ResNetGenerator(cfg)


def build_discriminator(cfg: GANConfig) -> nn.Module:
    """``D(x: (N, 3, H, W), y: (N,) long) -> (N,)`` logits / critic scores."""
    if cfg.preset == "mlp":
        from cganmodel.nets.mlp import MLPDiscriminator

        return MLPDiscriminator(cfg)
    if cfg.preset == "biggan":
        from cganmodel.nets.biggan import BigGANDiscriminator

        return BigGANDiscriminator(cfg)
    from cganmodel.nets.resnet import ResNetDiscriminator

    return ResNetDiscriminator(cfg)
