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
from cganmodel.shards import PathLike, check_member_name, class_at, class_index, split_member


class ShardDataset(Dataset[tuple[Any, int]]):
    """Map-style dataset over webdataset / imagefolder tars and npz shards (a directory, searched
    recursively, or a list of paths), and over a download unpacked with ``--layout imagefolder``
    (``<dir>/<class>/<key>.png``). Items are ``(float CHW tensor in [-1, 1], label)``, or
    ``(transform(PIL image), label)`` with a ``transform``. Tar images are read lazily by offset; npz
    arrays are loaded at construction. The webdataset shards are also readable
    by the ``webdataset`` library: ``webdataset.WebDataset(urls).decode("pil").to_tuple("png", "cls")``.

    Labels index one class list for every item, whatever its format: ``classes`` when given, else the ``classes``
    of the ``manifest.json`` of each item's download (the model's class order, as in ``.cls`` and npz ``labels``),
    which must then agree across the downloads read (models with other class lists: pass ``classes``). A directory
    may hold several downloads (``<dir>/<job>/...``), each beside its own manifest; a shard's manifest is the one in
    its folder or the folder above (``--layout imagefolder`` keeps shards in ``.shards/``). Shards read without any
    manifest keep their stored labels, and imagefolder items the sorted class folders present (``ImageFolder``
    order)."""

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
        own = _ManifestClasses()
        if classes is None:
            lists = {tuple(c) for c in (own.near(p) for p in [*paths, *unpacked]) if c is not None}
            if len(lists) > 1:
                raise ValueError(
                    f"these downloads come from models with {len(lists)} different class lists: pass classes=[...] to label "
                    "them all in one list"
                )
            classes = list(lists.pop()) if lists else None
        if classes is None:  # no manifest anywhere: the folders present, in ImageFolder order
            classes = sorted(
                {name.rpartition("/")[0] for members in tars.values() if _is_imagefolder(members) for name in members}
                | {path.parent.name for path in unpacked}
            )
            relabel = False
        else:
            relabel = True
        self._items: list[_TarItem | _ArrayItem | _FileItem] = []
        for path in paths:
            if path.suffix == ".npz":  # each row names its class
                self._items += _npz_items(path, classes if relabel else None)
                continue
            stored = own.near(path) if relabel else None
            if relabel and stored is None and not _is_imagefolder(tars[path]):
                raise ValueError(f"{path}: no manifest.json beside it names the classes its .cls labels index (read the download's folder)")
            self._items += _tar_items(path, tars[path], classes, stored)
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
    """The images of downloads unpacked as ImageFolder trees (``--layout imagefolder``): ``<dl>/<class>/<key>.png``
    where ``<dl>`` is a folder holding a ``manifest.json`` (one job's download: the directory given or one under it),
    or the directory given when none does (a bare tree); sorted by path. A ``contact-sheet.png`` is no class image."""
    if not isinstance(paths_or_dir, str | Path) or not Path(paths_or_dir).is_dir():
        return []
    root = Path(paths_or_dir)
    downloads = {m.parent for m in root.rglob("manifest.json") if not _hidden(m.relative_to(root))} or {root}  # no manifest: a bare tree
    return sorted({p for d in downloads for p in d.glob("*/*.png") if p.is_file() and not _hidden(p.relative_to(root))})


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


class _ManifestClasses:
    """The ``classes`` of the manifest.json of the download a file belongs to: in its folder or the one above."""

    def __init__(self) -> None:
        self._cache: dict[Path, list[str] | None] = {}

    def near(self, path: Path) -> list[str] | None:
        for folder in (path.parent, path.parent.parent):
            found = self._read(folder)
            if found is not None:
                return found
        return None

    def _read(self, folder: Path) -> list[str] | None:
        if folder not in self._cache:
            manifest = folder / "manifest.json"
            classes = json.loads(manifest.read_text()).get("classes") if manifest.is_file() else None
            self._cache[folder] = [str(c) for c in classes] if isinstance(classes, list) else None
        return self._cache[folder]


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


def _tar_items(path: Path, members: dict[str, tarfile.TarInfo], classes: Sequence[str], stored: Sequence[str] | None) -> list[_TarItem]:
    """Items of one tar. imagefolder members are labelled by their folder's index in ``classes``; webdataset ones by
    their ``.cls``, mapped through ``stored`` (the class list that ``.cls`` indexes) into ``classes`` when given."""
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
                if stored is not None:
                    label = class_index(classes, class_at(stored, label))
            items.append(_TarItem(path, member.offset_data, member.size, label))
    return items


def _npz_items(path: Path, classes: Sequence[str] | None) -> list[_ArrayItem]:
    """Items of one npz shard: its ``labels``, or with ``classes`` the index of each row's ``class_names`` there."""
    with np.load(path, allow_pickle=False) as npz:
        images, labels, names = npz["images"], npz["labels"], npz["class_names"]
    if classes is not None:
        labels = [class_index(classes, str(name)) for name in names]
    return [_ArrayItem(image, int(label)) for image, label in zip(images, labels, strict=True)]
