"""Result shards: write and read generated images as webdataset tars, ImageFolder tars or ``.npz``.

A pure library: it reads and writes file objects and local paths, never the network.

Writers are byte-for-byte deterministic: the same samples in the same order give the same bytes
(tar members with mtime 0, owner 0:0 without names, mode 0o644, PAX format, in sample order; npz
zip entries with a fixed date). Formats:

- ``webdataset``: ``<key>.png``, ``<key>.cls`` (class index, ASCII), ``<key>.json`` (``label`` = class
  name plus the sample's ``meta``, e.g. seed and model; sorted keys). Readable by the ``webdataset``
  library: ``webdataset.WebDataset(urls).decode("pil").to_tuple("png", "cls")``.
- ``imagefolder``: ``<class_name>/<key>.png``; unpacks into a ``torchvision.datasets.ImageFolder`` tree.
- ``npz``: arrays ``images`` (uint8 N,H,W,3), ``labels`` (int64 N), ``keys`` and ``class_names``
  (unicode N); ``numpy.load`` reads it.
"""
from __future__ import annotations

import io
import json
import queue
import re
import tarfile
import threading
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

import numpy as np
from PIL import Image

SHARD_EXTENSIONS = {"webdataset": ".tar", "imagefolder": ".tar", "npz": ".npz"}

# 32x32 RGB, smooth gradients + noise: level 1 and 6 run at the same speed within 5% (PIL's per-call
# overhead dominates at this size) and 6 is about 4% smaller, so we keep zlib's default.
PNG_COMPRESS_LEVEL = 6

_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # no dots: webdataset splits member names at the first one
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_NPZ_ARRAYS = ("images", "labels", "keys", "class_names")

PathLike = str | Path


@dataclass(frozen=True)
class Sample:
    """One generated image (uint8 H,W,3) with its label and JSON-serialisable metadata."""

    key: str
    image: np.ndarray
    label: int
    class_name: str
    meta: dict[str, Any] = field(default_factory=dict)


def shard_name(index: int, fmt: str) -> str:
    """``shard_name(3, "webdataset") == "shard-000003.tar"``."""
    return f"shard-{index:06d}{_extension(fmt)}"


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 H,W,3 array; the same array always gives the same bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 array shaped (H, W, 3), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_shard(fileobj: BinaryIO, samples: Iterable[Sample], fmt: str) -> int:
    """Write ``samples`` to ``fileobj`` (need not be seekable) as one shard; returns the sample count."""
    _extension(fmt)
    if fmt == "npz":
        return _write_npz(fileobj, samples)
    count = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            _check_key(sample.key)
            png = encode_png(sample.image)
            if fmt == "webdataset":
                doc = {**sample.meta, "label": sample.class_name}
                _add_member(tar, f"{sample.key}.png", png)
                _add_member(tar, f"{sample.key}.cls", str(int(sample.label)).encode("ascii"))
                _add_member(tar, f"{sample.key}.json", json.dumps(doc, sort_keys=True).encode())
            else:
                _add_member(tar, f"{check_class_name(sample.class_name)}/{sample.key}.png", png)
            count += 1
    return count


class ShardEncoder:
    """Encodes samples into one shard's bytes on a writer thread, so PNG encoding overlaps the caller's
    generation of the next batch. The bytes are those of :func:`write_shard` over the same samples.

        with ShardEncoder("webdataset") as encoder:
            for batch in batches:
                encoder.add(batch)
        data = encoder.data

    An encoding error is raised in the caller's thread (at the latest on leaving the ``with``).
    """

    def __init__(self, fmt: str, max_pending: int = 4) -> None:
        _extension(fmt)
        self.fmt = fmt
        self._batches: queue.Queue[list[Sample] | None] = queue.Queue(maxsize=max_pending)
        self._buffer = io.BytesIO()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._write, name=f"shard-writer-{fmt}", daemon=True)
        self.data: bytes | None = None

    def _samples(self) -> Iterator[Sample]:
        while (batch := self._batches.get()) is not None:
            yield from batch

    def _write(self) -> None:
        try:
            write_shard(self._buffer, self._samples(), self.fmt)
        except BaseException as exc:  # re-raised on the caller's thread
            self._failure.append(exc)
            while self._batches.get() is not None:  # drain so the caller never blocks
                pass

    def __enter__(self) -> ShardEncoder:
        self._thread.start()
        return self

    def add(self, samples: list[Sample]) -> None:
        if self._failure:
            raise self._failure[0]
        self._batches.put(samples)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._batches.put(None)
        self._thread.join()
        if self._failure and exc is None:
            raise self._failure[0]
        if exc is None:
            self.data = self._buffer.getvalue()


def iter_shard(
    source: PathLike | IO[bytes], fmt: str, *, classes: Sequence[str] | None = None
) -> Iterator[Sample]:
    """Samples of one shard, in stored order. ``imagefolder`` shards hold no class index: pass
    ``classes`` (index order) to label them. ``meta`` is the webdataset JSON without ``label``."""
    _extension(fmt)
    if fmt == "imagefolder" and classes is None:
        raise ValueError("imagefolder shards carry no class index: pass classes=")
    with _open_binary(source) as fileobj:
        if fmt == "npz":
            with np.load(fileobj, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _NPZ_ARRAYS}
            for key, image, label, class_name in zip(
                arrays["keys"], arrays["images"], arrays["labels"], arrays["class_names"], strict=True
            ):
                yield Sample(str(key), image, int(label), str(class_name))
            return
        for key, files in _iter_tar_records(fileobj):
            image = _decode_png(files["png"])
            if fmt == "webdataset":
                meta = json.loads(files["json"])
                class_name = meta.pop("label")
                yield Sample(key, image, int(files["cls"]), class_name, meta)
            else:
                class_name, _, name = key.rpartition("/")
                yield Sample(name, image, class_index(classes, class_name), class_name)


def unpack_to_imagefolder(shard_paths: Iterable[PathLike], dest_dir: PathLike, classes: Sequence[str]) -> int:
    """Write every image of the shards (any format, detected per file) to ``dest/<class>/<key>.png``;
    returns the number written. PNGs in tars are copied byte for byte; member names with ``..`` or an
    absolute path are refused. Only classes that have images get a folder (``ImageFolder`` refuses
    empty ones), so its indices match ``classes`` only when every class is present."""
    dest = Path(dest_dir)
    for name in classes:
        check_class_name(name)
    written = 0
    for path in map(Path, shard_paths):
        for class_name, key, png in _iter_pngs(path, classes):
            target = dest / class_name / f"{key}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.parent.is_symlink() or target.is_symlink():
                raise ValueError(f"{target} is or lies in a symbolic link: refusing to write through it")
            target.write_bytes(png)
            written += 1
    return written


# --- writing ---------------------------------------------------------------------------------------


def _extension(fmt: str) -> str:
    try:
        return SHARD_EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown shard format {fmt!r}; expected one of {sorted(SHARD_EXTENSIONS)}") from None


def _check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"sample key {key!r} must match {_KEY_RE.pattern}")
    return key


MAX_CLASS_NAME_BYTES = 255  # a folder name on common file systems (ext4, XFS, APFS, NTFS): the imagefolder layout


def check_class_name(name: str) -> str:
    """A class name every output can hold: a folder name of the imagefolder layout (no separator, not ``.``/``..``,
    at most 255 bytes as UTF-8), and printable (no control character: a newline cannot be drawn on the contact
    sheet or shown on one line)."""
    if not name or name in {".", ".."} or any(c in name for c in "/\\\0"):
        raise ValueError(f"class name {name!r} cannot be a folder name")
    control = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if control is not None:
        raise ValueError(f"class name {name!r} holds a control character ({control!r}): rename the folder")
    if len(name.encode("utf-8")) > MAX_CLASS_NAME_BYTES:
        raise ValueError(f"class name {name[:40]!r}... is {len(name.encode('utf-8'))} bytes, above the {MAX_CLASS_NAME_BYTES} a folder name may have")
    return name


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _write_npz(fileobj: BinaryIO, samples: Iterable[Sample]) -> int:
    rows = list(samples)
    for sample in rows:
        _check_key(sample.key)
    arrays = {
        "images": np.stack([s.image for s in rows]).astype(np.uint8, copy=False)
        if rows
        else np.zeros((0, 0, 0, 3), np.uint8),
        "labels": np.array([s.label for s in rows], dtype=np.int64),
        "keys": np.array([s.key for s in rows], dtype=np.str_),
        "class_names": np.array([s.class_name for s in rows], dtype=np.str_),
    }
    # Built in memory so the bytes do not depend on whether ``fileobj`` is seekable.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    fileobj.write(buf.getvalue())
    return len(rows)


# --- reading ---------------------------------------------------------------------------------------


def _open_binary(source: PathLike | IO[bytes]) -> AbstractContextManager[IO[bytes]]:
    """A path is opened (and closed after); a caller's file object is used as it is, left open."""
    return open(source, "rb") if isinstance(source, str | Path) else nullcontext(source)


def check_member_name(name: str) -> str:
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or "\\" in name or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"unsafe tar member name {name!r}")
    return name


def split_member(name: str) -> tuple[str, str]:
    """``"cat/k1.png" -> ("cat/k1", "png")``: the key ends at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        raise ValueError(f"tar member {name!r} has no <key>.<ext> name")
    return f"{folder}/{stem}" if folder else stem, ext


def _iter_tar_records(fileobj: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` for consecutive members sharing a key (webdataset's grouping)."""
    key: str | None = None
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            check_member_name(member.name)
            if member.isdir():
                continue
            if not member.isfile():
                raise ValueError(f"tar member {member.name!r} is not a regular file")
            member_key, ext = split_member(member.name)
            if member_key != key and key is not None:
                yield key, files
                files = {}
            key = member_key
            extracted = tar.extractfile(member)
            assert extracted is not None  # regular file
            files[ext] = extracted.read()
    if key is not None:
        yield key, files


def _iter_pngs(path: Path, classes: Sequence[str]) -> Iterator[tuple[str, str, bytes]]:
    """``(class_name, key, png bytes)`` of any shard; the format is read off the file."""
    if path.suffix == ".npz":
        for sample in iter_shard(path, "npz"):
            yield class_at(classes, sample.label), sample.key, encode_png(sample.image)
        return
    with open(path, "rb") as fileobj:
        for key, files in _iter_tar_records(fileobj):
            if "cls" in files:  # webdataset
                yield class_at(classes, int(files["cls"])), _check_key(key), files["png"]
            else:
                class_name, _, name = key.rpartition("/")
                class_index(classes, class_name)
                yield class_name, _check_key(name), files["png"]


def class_index(classes: Sequence[str] | None, class_name: str) -> int:
    assert classes is not None
    try:
        return list(classes).index(class_name)
    except ValueError:
        raise ValueError(f"class folder {class_name!r} is not one of the classes {list(classes)}") from None


def class_at(classes: Sequence[str], index: int) -> str:
    if not 0 <= index < len(classes):
        raise ValueError(f"class index {index} is outside the {len(classes)} classes")
    return classes[index]


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))
