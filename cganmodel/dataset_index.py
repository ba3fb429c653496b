"""Listing an ImageFolder tree or tarball: which files are images of which class, without decoding.

Torch-free, so the control plane (``cganctl submit generate --fill-to``) can count a dataset's
classes without importing torch; :mod:`cganmodel.data` decodes what this module selects.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from cganmodel.limits import DEFAULT_LIMITS, DataLimits

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # the builtin `cifar10`
CIFAR10_PER_CLASS = {"train": 5000, "test": 1000}  # images per class of each split of the builtin `cifar10`
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class DataError(ValueError):
    """A data source is missing, unreadable, empty or not an ImageFolder tree."""


@dataclasses.dataclass
class Skipped:
    """What a reading of a tree passes over, for the user's warnings: the regular files that are no image
    (by extension, hidden files aside), every folder it saw, and from those the class folders of the train
    split without an image (no class of the model: a copy that failed, photos in a format not read)."""

    files: Counter[str] = dataclasses.field(default_factory=Counter)
    folders: set[tuple[str, ...]] = dataclasses.field(default_factory=set)
    empty_classes: list[str] = dataclasses.field(default_factory=list)
    links: int = 0  # archive members that are symbolic or hard links: never followed, never read
    special: int = 0  # archive members that are devices or FIFOs: never read

    def notes(self) -> list[str]:
        """One line each, for ``warning:``: "3 files are not images and were not read (.heic 2, .txt 1; ...)"."""
        notes = []
        total = sum(self.files.values())
        if total:
            kinds = ", ".join(f"{ext} {n}" for ext, n in self.files.most_common(6)) + (", ..." if len(self.files) > 6 else "")
            verb = "file is not an image and was" if total == 1 else "files are not images and were"
            notes.append(f"{total} {verb} not read ({kinds}; images end in {', '.join(IMAGE_EXTENSIONS)})")
        if self.empty_classes:
            shown = ", ".join(self.empty_classes[:20]) + (", ..." if len(self.empty_classes) > 20 else "")
            folders = "class folder holds no image and is not a class" if len(self.empty_classes) == 1 else "class folders hold no image and are not classes"
            notes.append(f"{len(self.empty_classes)} {folders} of this dataset: {shown}")
        if self.links:
            what = "archive member is a link and was" if self.links == 1 else "archive members are links and were"
            notes.append(f"{self.links} {what} not read (links in an archive are never followed: pack the files themselves, tar -h)")
        if self.special:
            what = "archive member is a device or FIFO and was" if self.special == 1 else "archive members are devices or FIFOs and were"
            notes.append(f"{self.special} {what} not read")
        return notes


def is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def is_hidden(name: str) -> bool:
    """A path with a hidden part (``.git/``, ``.ipynb_checkpoints/``, ``.DS_Store``): not the dataset's, in a folder
    (the walk does not enter it) and in an archive alike. ``..`` is not hidden: it is refused where it appears."""
    return any(p.startswith(".") and p != ".." for p in PurePosixPath(name).parts)


def is_image(name: str) -> bool:
    return not is_hidden(name) and PurePosixPath(name).name.lower().endswith(IMAGE_EXTENSIONS)


def select(
    paths: list[tuple[str, ...]], split: str, source: str, *, require_split: bool = False
) -> dict[str, list[int]]:
    """Map class name -> indices into ``paths`` (path parts) for ``split``, classes sorted and each class's
    images in path order (not the archive's member order or the folder walk's).

    Leading folders shared by every file are skipped (e.g. ``cifar10-jpeg/``); if the tree then
    starts with split folders (``train/``, ``test/``...), ``split`` picks one. A tree without split
    folders is all one split, unless ``require_split`` (then it has no ``split``: DataError).
    """
    keep, depth = _locate(paths, split, source, require_split=require_split)
    by_class: dict[str, list[int]] = {}
    for i in sorted(keep, key=lambda i: paths[i]):  # by path: a folder and any archive of it give one order
        by_class.setdefault(paths[i][depth], []).append(i)
    for name, idx in by_class.items():
        direct = [paths[i] for i in idx if len(paths[i]) == depth + 2]  # e.g. train/x.jpg, not train/cat/0.jpg
        _check_class(name, (direct or [paths[idx[0]]])[0], source)
    return dict(sorted(by_class.items()))


def _locate(paths: list[tuple[str, ...]], split: str, source: str, *, require_split: bool = False) -> tuple[list[int], int]:
    """The indices of ``split``'s images in ``paths`` and the depth of their class folder (see :func:`select`)."""
    if not paths:
        raise DataError(f"{source}: no image files found (the files read end in {', '.join(IMAGE_EXTENSIONS)})")
    climbing = next((p for p in paths if ".." in p), None)
    if climbing is not None:
        raise DataError(f"{source}: {'/'.join(climbing)!r} climbs out of the tree with '..'")
    depth = 0
    while all(len(p) > depth + 2 for p in paths) and len({p[depth] for p in paths}) == 1:
        if paths[0][depth] in SPLIT_NAMES:
            break
        depth += 1
    tops = {p[depth] for p in paths if len(p) > depth + 1}
    in_splits = [p for p in paths if p[depth] in SPLIT_NAMES]
    if in_splits and not tops <= set(SPLIT_NAMES) and all(len(p) > depth + 2 for p in in_splits):
        other = next(p for p in paths if p[depth] not in SPLIT_NAMES)
        raise DataError(
            f"{source}: mixes split folders with other folders: {sorted(tops)}, e.g. {'/'.join(other)!r} "
            f"(expected either <split>/<class>/<image> throughout or <class>/<image> throughout)"
        )
    if tops & set(SPLIT_NAMES) and all(len(p) > depth + 2 for p in paths):
        if split not in tops:
            raise DataError(f"{source}: no {split!r} split; found {sorted(tops)}{rename_hint(split, tops)}")
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
    return keep, depth


def _empty_classes(paths: list[tuple[str, ...]], split: str, source: str, folders: set[tuple[str, ...]]) -> list[str]:
    """The folders beside ``split``'s class folders (same parent) that hold no image of it, sorted."""
    keep, depth = _locate(paths, split, source)
    parent = paths[keep[0]][:depth]
    classes = {paths[i][depth] for i in keep}
    return sorted({f[depth] for f in folders if len(f) == depth + 1 and f[:depth] == parent and not f[depth].startswith(".")} - classes)


def rename_hint(split: str, found) -> str:
    """What to do when the test split is asked for and a tree has a validation split instead."""
    return " (a val/ split is not read as the test split: rename it test/)" if split == "test" and set(found) & {"val", "valid", "validation"} else ""


def _check_class(name: str, example: tuple[str, ...], source: str) -> None:
    """A class is a folder name that every output format can hold, and not a split folder holding images."""
    from cganmodel.shards import check_class_name

    where = "/".join(example)
    if name in SPLIT_NAMES:
        raise DataError(f"{source}: images directly in the split folder {name!r}, e.g. {where!r} (expected {name}/<class>/<image>)")
    try:
        check_class_name(name)
    except ValueError as exc:
        raise DataError(f"{source}: {exc} (e.g. {where!r})") from None


def to_rgb(im: "Image.Image") -> "Image.Image":
    """The one rule for pixel depth: 8-bit RGB. An image of more than 8 bits a sample (a 16-bit grayscale PNG or
    TIFF opens as mode ``I;16``, a 32-bit one as ``I``) is scaled from its full 16-bit range, 0-65535 to 0-255
    (PIL's own conversion would clip every value above 255 to white); a floating-point image (mode ``F``) has no
    known range and is refused."""
    if im.mode == "F":
        raise ValueError("a floating-point image (mode F) has no known range of values: save it with 8 or 16 bits a sample")
    if im.mode == "I" or im.mode.startswith("I;16"):
        import numpy as np
        from PIL import Image

        wide = np.asarray(im, dtype=np.int64).clip(0, 65535)
        im = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    return im.convert("RGB")


def check_decodes(blobs: list[bytes], names: list[str]) -> None:
    """Every image decodes whole (a truncated PNG or JPEG has a header that opens, then fails): DataError
    naming the first that does not. Check the header budgets first (``limits.check_images``)."""
    from PIL import Image

    for data, name in zip(blobs, names, strict=True):
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                to_rgb(image)  # the depth rule too: a floating-point image is refused here, not after training
        except Exception as exc:
            raise DataError(f"cannot decode image {name!r} ({exc})") from None


def iter_tar(path: Path, read: bool, limits: DataLimits | None = None, skipped: Skipped | None = None) -> Iterator[tuple[str, bytes | None]]:
    """(member name, bytes or None) for each regular image file, streaming (no extraction). A member
    larger than ``limits.member_bytes`` is refused from its header, before a byte of it is read.
    ``skipped`` collects the regular files that are not read and the folders (:class:`Skipped`)."""
    limits = limits or DEFAULT_LIMITS
    seen = unpacked = 0
    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                seen += 1
                if seen > limits.entries:
                    raise DataError(f"{path}: more than {limits.entries} archive members (CGAN_MAX_DATASET_ENTRIES)")
                unpacked += member.size  # from the header: a member skipped is still decompressed to get past it
                if unpacked > limits.archive_bytes:
                    raise DataError(f"{path}: its members add up to more than {limits.archive_bytes} bytes unpacked (CGAN_MAX_DATASET_BYTES)")
                if is_hidden(member.name):
                    continue  # as the folder walk does not enter .git/ or read .DS_Store
                if skipped is not None:
                    _note(member.name, member.isdir(), member.isfile() and not is_image(member.name), skipped)
                    skipped.links += member.issym() or member.islnk()
                    skipped.special += member.ischr() or member.isblk() or member.isfifo()
                if member.isfile() and is_image(member.name):
                    if member.name in names:  # unpacked, the last copy wins; read, both would count
                        raise DataError(f"{path}: member {member.name!r} appears twice in the archive")
                    names.add(member.name)
                    if member.size > limits.member_bytes:
                        raise DataError(
                            f"{path}: member {member.name!r} is {member.size} bytes, above the limit of "
                            f"{limits.member_bytes} (CGAN_MAX_ARCHIVE_MEMBER_BYTES)"
                        )
                    data = None
                    if read:
                        f = tf.extractfile(member)
                        data = f.read() if f is not None else b""
                    yield member.name, data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _note(name: str, folder: bool, other: bool, skipped: Skipped) -> None:
    """Record a folder, or a regular file that is no image, of a tree being read (and the folders that hold
    it: an archive of file members alone has no folder members)."""
    path = parts(name)
    if folder and path:
        skipped.folders.add(path)
    elif len(path) > 1:
        skipped.folders.update(path[:k] for k in range(1, len(path)))
    base = PurePosixPath(name).name
    if other and not base.startswith("."):  # .DS_Store and the like: nobody's data
        skipped.files[PurePosixPath(base).suffix.lower() or "(no extension)"] += 1


def list_dir(path: Path, limits: DataLimits | None = None, skipped: Skipped | None = None) -> list[str]:
    """Image files under ``path`` (relative POSIX names), sorted per folder. Symbolic links are followed
    only where they stay inside ``path``'s real folder; each real folder is visited once (no loop can
    hang the walk, no link can count one class's images as another's twice), and under its own name
    before under a link's (the tree is walked without links first, then the links to folders not yet
    visited); only regular files count; at most ``limits.entries`` paths are visited and no file may
    exceed ``limits.member_bytes``. ``skipped`` collects the folders and the files that are no image."""
    limits = limits or DEFAULT_LIMITS
    root = os.path.realpath(path)
    names: list[str] = []
    visited: set[str] = set()
    seen = 0
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    linked: list[tuple[str, tuple[str, ...]]] = []  # folders reached through a link: walked after the rest
    while stack or linked:
        if not stack:
            stack.append(linked.pop(0))
        real_dir, rel = stack.pop()
        if real_dir in visited:
            continue
        visited.add(real_dir)
        try:
            entries = sorted(os.scandir(real_dir), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{path}: cannot list {os.path.join(path, *rel)} ({exc.strerror or exc})") from None
        subdirs: list[tuple[str, tuple[str, ...]]] = []
        for entry in entries:
            seen += 1
            if seen > limits.entries:
                raise DataError(f"{path}: more than {limits.entries} paths (CGAN_MAX_DATASET_ENTRIES)")
            if entry.name.startswith("."):
                continue
            try:
                real = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
            except OSError:
                continue  # a link that cannot be resolved (/proc/1/cwd): not followed, as one that leads out
            if not _inside(real, root):
                continue  # a link out of the dataset is not followed
            try:
                st = os.stat(real)
            except OSError:
                continue  # a dangling link
            if stat.S_ISDIR(st.st_mode):
                (linked if entry.is_symlink() else subdirs).append((real, (*rel, entry.name)))
                if skipped is not None and not entry.is_symlink():  # a link to a class folder is no class of its own
                    _note("/".join((*rel, entry.name)), True, False, skipped)
            elif stat.S_ISREG(st.st_mode) and is_image(entry.name):
                if entry.is_symlink() and os.path.dirname(real) != real_dir:
                    continue  # a link to an image of another folder would relabel it
                if st.st_size > limits.member_bytes:
                    raise DataError(
                        f"{path}: {'/'.join((*rel, entry.name))} is {st.st_size} bytes, above the limit of "
                        f"{limits.member_bytes} (CGAN_MAX_ARCHIVE_MEMBER_BYTES)"
                    )
                names.append(str(PurePosixPath(*rel, entry.name)))
            elif stat.S_ISREG(st.st_mode) and skipped is not None:
                _note(entry.name, False, True, skipped)
        stack.extend(reversed(subdirs))
    return names


def parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name).parts if p not in ("", ".", "/"))


def resolve(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist (expected 'cifar10', a registered dataset name, a folder or a {'/'.join(TAR_SUFFIXES)} archive)")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"{source}: neither a folder nor a regular file")
    if path.is_file() and not is_tar(path):
        raise DataError(f"{source}: not a directory or a .tar/.tar.gz archive")
    return path


def count_images(source: str, split: str = "train", limits: DataLimits | None = None, *, require_split: bool = False,
                 skipped: Skipped | None = None) -> dict[str, int]:
    """Images per class in an ImageFolder directory or tarball (``split`` where it has split folders;
    with ``require_split`` a tree without split folders is a DataError); ``skipped`` collects the files of
    the whole tree that are not read as images and ``split``'s class folders without an image."""
    path = resolve(source)
    names = _walk(path, limits, skipped)
    paths = [parts(n) for n in names]
    selected = select(paths, split, source, require_split=require_split)
    if skipped is not None:
        skipped.empty_classes = _empty_classes(paths, split, source, skipped.folders)
    return {c: len(idx) for c, idx in selected.items()}


def _walk(path: Path, limits: DataLimits | None, skipped: Skipped | None) -> list[str]:
    return list_dir(path, limits, skipped) if path.is_dir() else [n for n, _ in iter_tar(path, read=False, limits=limits, skipped=skipped)]


def count_splits(source: str, limits: DataLimits | None = None, skipped: Skipped | None = None) -> dict[str, dict[str, int]]:
    """Images per class of every split of a tree in one reading: ``train`` (the whole tree where it has no
    split folders; a DataError where it cannot be read) and each other split folder it has (``test``, ``val``...)."""
    path = resolve(source)
    paths = [parts(n) for n in _walk(path, limits, skipped)]
    splits = {"train": {c: len(idx) for c, idx in select(paths, "train", source).items()}}
    if skipped is not None:
        skipped.empty_classes = _empty_classes(paths, "train", source, skipped.folders)
    for split in SPLIT_NAMES[1:]:
        try:
            splits[split] = {c: len(idx) for c, idx in select(paths, split, source, require_split=True).items()}
        except DataError:
            continue
    return splits


def fingerprint(source: str, limits: DataLimits | None = None) -> str | None:
    """What a cache of statistics about ``source`` must change with: a file's size and modification time,
    or, for a folder, the relative name, size and modification time of every image in it (a rewritten image
    changes it even when the folder's own time does not). None for ``cifar10`` or a missing path."""
    import hashlib

    path = Path(source).expanduser()
    if not path.exists():
        return None
    if not path.is_dir():
        st = path.stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256()
    for name in list_dir(path, limits):
        st = (path / name).stat()
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"dir:{digest.hexdigest()}"
