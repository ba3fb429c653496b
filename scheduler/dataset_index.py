"""Counting an ImageFolder dataset's images per class without decoding anything (and without torch).

Used by ``submit generate --fill-to N --dataset PATH`` on the submitting machine. A dataset is a folder
``<class>/<image>`` (or one with ``train/`` inside) or a .tar/.tar.gz of one.
"""
from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path, PurePosixPath

from .errors import InvalidInput

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}


def _count(paths: list[PurePosixPath], split: str) -> dict[str, int]:
    """Class counts from relative image paths; the class is the folder right above the file."""
    images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and len(p.parts) >= 2]
    if any(split in p.parts[:-2] for p in images):
        images = [p for p in images if split in p.parts[:-2]]
    return dict(sorted(Counter(p.parts[-2] for p in images).items()))


def class_counts(source: str, split: str = "train") -> dict[str, int]:
    path = Path(source).expanduser()
    if path.is_dir():
        counts = _count([PurePosixPath(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file()], split)
    elif path.is_file():
        try:
            with tarfile.open(path) as archive:
                counts = _count([PurePosixPath(m.name) for m in archive.getmembers() if m.isfile()], split)
        except (tarfile.TarError, OSError) as exc:
            raise InvalidInput(f"cannot read dataset {source}: {exc}") from None
    else:
        raise InvalidInput(f"dataset {source} does not exist (expected an ImageFolder directory or a .tar/.tar.gz of one)")
    if not counts:
        raise InvalidInput(f"dataset {source} holds no images in <class>/<image> folders")
    return counts
