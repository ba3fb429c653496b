"""Listing an ImageFolder tree or tarball: which files are images of which class, without decoding.

Torch-free, so the control plane (``cganctl submit generate --fill-to``) can count a dataset's
classes without importing torch; :mod:`cganmodel.data` decodes what this module selects.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class DataError(ValueError):
    """A data source is missing, unreadable, empty or not an ImageFolder tree."""


def is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def is_image(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def select(
    paths: list[tuple[str, ...]], split: str, source: str, *, require_split: bool = False
) -> dict[str, list[int]]:
    """Map class name -> indices into ``paths`` (path parts) for ``split``.

    Leading folders shared by every file are skipped (e.g. ``cifar10-jpeg/``); if the tree then
    starts with split folders (``train/``, ``test/``...), ``split`` picks one. A tree without split
    folders is all one split, unless ``require_split`` (then it has no ``split``: DataError).
    """
    if not paths:
        raise DataError(f"{source}: no image files found")
    depth = 0
    while all(len(p) > depth + 2 for p in paths) and len({p[depth] for p in paths}) == 1:
        if paths[0][depth] in SPLIT_NAMES:
            break
        depth += 1
    tops = {p[depth] for p in paths if len(p) > depth + 1}
    if tops & set(SPLIT_NAMES) and all(len(p) > depth + 2 for p in paths):
        if split not in tops:
            raise DataError(f"{source}: no {split!r} split; found {sorted(tops)}")
        if not tops <= set(SPLIT_NAMES):
            raise DataError(f"{source}: mixes split folders with other folders: {sorted(tops)}")
        keep = [i for i, p in enumerate(paths) if p[depth] == split]
        depth += 1
    elif require_split:
        raise DataError(f"{source}: no {split!r} split (no split folders such as train/ and test/)")
    else:
        keep = list(range(len(paths)))
    loose = [paths[i] for i in keep if len(paths[i]) <= depth + 1]
    if loose:
        raise DataError(
            f"{source}: image files outside class folders, e.g. {'/'.join(loose[0])!r} "
            "(expected <root>/<class>/<image>)"
        )
    by_class: dict[str, list[int]] = {}
    for i in keep:
        by_class.setdefault(paths[i][depth], []).append(i)
    return dict(sorted(by_class.items()))


def iter_tar(path: Path, read: bool) -> Iterator[tuple[str, bytes | None]]:
    """(member name, bytes or None) for each regular image file, streaming (no extraction)."""
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if member.isfile() and is_image(member.name):
                    data = None
                    if read:
                        f = tf.extractfile(member)
                        data = f.read() if f is not None else b""
                    yield member.name, data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None


def list_dir(path: Path) -> list[str]:
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(path)
        names.extend(str(PurePosixPath(*rel.parts, f)) for f in sorted(filenames) if is_image(f))
    return names


def parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name).parts if p not in ("", ".", "/"))


def resolve(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist (expected 'cifar10', a directory or a tar archive)")
    if path.is_file() and not is_tar(path):
        raise DataError(f"{source}: not a directory or a .tar/.tar.gz archive")
    return path


def count_images(source: str, split: str = "train", *, require_split: bool = False) -> dict[str, int]:
    """Images per class in an ImageFolder directory or tarball (``split`` where it has split folders;
    with ``require_split`` a tree without split folders is a DataError)."""
    path = resolve(source)
    names = list_dir(path) if path.is_dir() else [n for n, _ in iter_tar(path, read=False)]
    selected = select([parts(n) for n in names], split, source, require_split=require_split)
    return {c: len(idx) for c, idx in selected.items()}
