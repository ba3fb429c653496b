"""Tiny made-up image data sets for tests and benches (no download, a few KB)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def tiny_image_folder(root: Path, classes: tuple[str, ...] = ("airplane", "cat", "frog"), per_class: int = 8, size: int = 32) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.png`` of flat colours, distinct per class; returns ``root``."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (40 + 80 * c % 256, (200 - 60 * c) % 256, (37 * i) % 255)
            Image.new("RGB", (size, size), colour).save(root / name / f"{i}.png")
    return root
