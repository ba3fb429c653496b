"""``ShardDataset``: a torch ``Dataset`` over the shards a generate job wrote (downloaded files).

Kept apart from :mod:`cganmodel.shards` (torch-free) so that writing, verifying and unpacking shards,
e.g. ``cganctl results download``, never imports torch.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cganmodel.imaging import to_float
from cganmodel.shards import PathLike, check_member_name, class_index, split_member


class ShardDataset(Dataset[tuple[Any, int]]):
    """Map-style dataset over webdataset / imagefolder tars and npz shards (a directory, searched
    recursively, or a list of paths), and over a download unpacked with ``--layout imagefolder``
    (``<dir>/<class>/<key>.png``). Items are ``(float CHW tensor in [-1, 1], label)``, or
    ``(transform(PIL image), label)`` with a ``transform``. Tar images are read lazily by offset; npz
    arrays are loaded at construction. The webdataset shards are also readable
    by the ``webdataset`` library: ``webdataset.WebDataset(urls).decode("pil").to_tuple("png", "cls")``.

    ``imagefolder`` labels index ``classes``: by default the ``classes`` of the ``manifest.json`` in a
    downloaded folder (the model's class order, as the ``.cls`` of webdataset shards and the ``labels`` of
    npz shards: one class, one index, whatever the format), else the sorted class folders of all those
    shards (``ImageFolder`` order)."""

    def __init__(
        self,
        paths_or_dir: PathLike | Sequence[PathLike],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.transform = transform
        paths = _shard_paths(paths_or_dir)
        tars = {path: _tar_members(path) for path in paths if path.suffix != ".npz"}
        unpacked = _unpacked_images(paths_or_dir)
        if classes is None:
            classes = _manifest_classes(paths_or_dir)
        if classes is None:
            classes = sorted(
                {name.rpartition("/")[0] for members in tars.values() if _is_imagefolder(members) for name in members}
                | {path.parent.name for path in unpacked}
            )
        self._items: list[_TarItem | _ArrayItem | _FileItem] = []
        for path in paths:
            if path.suffix == ".npz":
                self._items += _npz_items(path)
            else:
                self._items += _tar_items(path, tars[path], classes)
        self._items += [_FileItem(path, class_index(classes, path.parent.name)) for path in unpacked]
        if not self._items and isinstance(paths_or_dir, str | Path) and Path(paths_or_dir).is_dir():
            raise ValueError(f"{paths_or_dir}: no shards (.tar, .npz) and no <class>/<image>.png files under it")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self._items[index]
        image = item.pil()
        if self.transform is not None:
            return self.transform(image), item.label
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        return to_float(array.permute(2, 0, 1)), item.label


# --- ShardDataset indexing -------------------------------------------------------------------------


@dataclass(frozen=True)
class _TarItem:
    path: Path
    offset: int
    size: int
    label: int

    def pil(self) -> Image.Image:
        with open(self.path, "rb") as fileobj:
            fileobj.seek(self.offset)
            data = fileobj.read(self.size)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")


@dataclass(frozen=True)
class _ArrayItem:
    image: np.ndarray
    label: int

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


@dataclass(frozen=True)
class _FileItem:
    path: Path
    label: int

    def pil(self) -> Image.Image:
        with Image.open(self.path) as image:
            return image.convert("RGB")


def _unpacked_images(paths_or_dir: PathLike | Sequence[PathLike]) -> list[Path]:
    """The images of a download unpacked as an ImageFolder tree (``--layout imagefolder``):
    ``<dir>/<class>/<key>.png``, sorted by class folder, then name."""
    if not isinstance(paths_or_dir, str | Path) or not Path(paths_or_dir).is_dir():
        return []
    return sorted(p for p in Path(paths_or_dir).glob("*/*.png") if p.is_file() and not p.parent.name.startswith("."))


def _manifest_classes(paths_or_dir: PathLike | Sequence[PathLike]) -> list[str] | None:
    """The class list of the job whose download ``paths_or_dir`` is (its ``manifest.json``), if it is one."""
    if not isinstance(paths_or_dir, str | Path) or not (Path(paths_or_dir) / "manifest.json").is_file():
        return None
    classes = json.loads((Path(paths_or_dir) / "manifest.json").read_text()).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None


def _shard_paths(paths_or_dir: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(paths_or_dir, str | Path) and Path(paths_or_dir).is_dir():
        root = Path(paths_or_dir)
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".tar", ".npz"})
    if isinstance(paths_or_dir, str | Path):
        return [Path(paths_or_dir)]
    return [Path(p) for p in paths_or_dir]


def _tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:") as tar:
        members = {}
        for member in tar.getmembers():
            check_member_name(member.name)
            if member.isfile():
                members[member.name] = member
            elif not member.isdir():
                raise ValueError(f"{path}: tar member {member.name!r} is not a regular file")
    return members


def _is_imagefolder(members: dict[str, tarfile.TarInfo]) -> bool:
    return not any(name.endswith(".cls") for name in members)


def _tar_items(path: Path, members: dict[str, tarfile.TarInfo], classes: Sequence[str]) -> list[_TarItem]:
    imagefolder = _is_imagefolder(members)
    items = []
    with open(path, "rb") as fileobj:
        for name, member in members.items():
            key, ext = split_member(name)
            if ext != "png":
                continue
            if imagefolder:
                label = class_index(classes, key.rpartition("/")[0])
            else:
                fileobj.seek(members[f"{key}.cls"].offset_data)
                label = int(fileobj.read(members[f"{key}.cls"].size))
            items.append(_TarItem(path, member.offset_data, member.size, label))
    return items


def _npz_items(path: Path) -> list[_ArrayItem]:
    with np.load(path, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    return [_ArrayItem(image, int(label)) for image, label in zip(images, labels, strict=True)]
