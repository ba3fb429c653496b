"""Datasets held in the project's object store: registered names and ``s3://`` URIs in the project's bucket (issue 8).

- ``cganctl datasets add NAME FILE`` checks FILE (a .tar/.tar.gz ImageFolder archive, or a folder, packed first
  into a reproducible .tar.gz: the same files give the same archive) under the reading budgets, uploads it content-addressed as ``datasets/NAME/<sha256>.<ext>`` and writes its index
  ``datasets/NAME.json`` (key, sha256, size, classes and counts per split). Adding NAME again replaces the
  index; a job already submitted keeps reading the archive its spec names.
- A submit turns ``--dataset NAME`` / ``--reference NAME`` and ``s3://<the project's bucket>/KEY`` into
  ``store:KEY`` in the spec: one fixed object.
- A worker (and a submit that must count an ``s3://`` archive's classes) reads ``store:KEY`` from a local
  copy under ``<data_dir>/cache/datasets/``, downloaded once, at most ``CGAN_MAX_DATASET_BYTES``, checked
  against the sha256 in its key when the key has one; then the same budgets apply as to any archive.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from cganmodel.dataset_index import TAR_SUFFIXES, Skipped, is_hidden

from .errors import CganError, InvalidInput, NotFound
from .records import utcnow
from .settings import Settings
from .store import ObjectStore

BUILTIN_DATASETS = ("cifar10",)  # names that are never a registered dataset: torchvision's copy, downloaded by the worker
STORE_SCHEME = "store:"
PREFIX = "datasets/"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ARCHIVE_SUFFIXES = TAR_SUFFIXES  # what a dataset source may be is one rule: cganmodel.dataset_index
ARCHIVES_SAID = ", ".join(ARCHIVE_SUFFIXES[:-1]) + " or " + ARCHIVE_SUFFIXES[-1]
_CONTENT_KEY = re.compile(r"^datasets/[a-z0-9][a-z0-9_-]{0,63}/(?P<sha>[0-9a-f]{64})\.(tar\.gz|tgz|tar)$")


class DatasetError(InvalidInput):
    """A dataset name, URI or archive that cannot be used."""


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: where its archive is, what it holds (``splits``: split -> class -> images)."""

    name: str
    key: str
    sha256: str
    size: int
    splits: dict[str, dict[str, int]]
    source: str
    added_at: str

    @property
    def ref(self) -> str:
        return STORE_SCHEME + self.key

    @property
    def classes(self) -> list[str]:
        return list(self.splits.get("train") or next(iter(self.splits.values()), {}))


def archive_suffix(name: str) -> str | None:
    return next((s for s in ARCHIVE_SUFFIXES if name.lower().endswith(s)), None)


def index_key(name: str) -> str:
    return f"{PREFIX}{name}.json"


def get(store: ObjectStore, name: str) -> DatasetEntry | None:
    try:
        data = json.loads(store.get_bytes(index_key(name)))
        return DatasetEntry(**{f.name: data[f.name] for f in dataclasses.fields(DatasetEntry)})
    except NotFound:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"the index of dataset {name} ({index_key(name)}) is unreadable ({type(exc).__name__}); add the dataset again") from None


def registered(store: ObjectStore) -> list[DatasetEntry]:
    names = [k[len(PREFIX):-len(".json")] for k in store.list(PREFIX) if k.endswith(".json") and "/" not in k[len(PREFIX):]]
    return [entry for entry in (get(store, n) for n in names) if entry is not None]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def classes_only_in_test(splits: dict[str, dict[str, int]]) -> list[str]:
    """The test split's classes that the train split lacks: a classifier trained on it could not score them
    (a test split may lack some train classes, not add others)."""
    train, test = splits.get("train", {}), splits.get("test") or {}
    return [name for name in test if name not in train]


def _splits(path: Path, settings: Settings, skipped: Skipped | None = None, shown: Path | None = None) -> dict[str, dict[str, int]]:
    """Classes and counts of the archive's train split (or of the whole tree) and of each other split it has
    (``test``, and ``val`` that no job reads: listed, so that a user sees it)."""
    from cganmodel.dataset_index import DataError, count_splits

    try:
        splits = count_splits(str(path), limits=settings.dataset_limits(), skipped=skipped)
    except DataError as exc:
        raise DatasetError(_said(f"cannot register {shown or path}: {exc}", path, shown)) from None
    _check_images(path, settings, shown=shown)
    return splits


def _said(message: str, path: Path, shown: Path | None) -> str:
    """``message`` naming the folder ``shown`` wherever it names the archive ``path`` packed from it."""
    return message.replace(str(path), str(shown)) if shown is not None else message


def _check_images(path: Path, settings: Settings, batch: int = 1000, shown: Path | None = None) -> None:
    """Every image of the archive has a header that opens, within the image budgets, and then decodes
    whole: a file that is no image, one too large or one cut short is refused here rather than failing
    every job later."""
    from cganmodel.dataset_index import DataError, check_decodes, iter_tar
    from cganmodel.limits import BudgetExceeded, check_images

    limits = settings.dataset_limits()
    names: list[str] = []
    blobs: list[bytes] = []
    total = 0
    try:
        for name, data in iter_tar(path, read=True, limits=limits):
            names.append(name)
            blobs.append(data or b"")
            if len(names) >= batch:
                total = check_images(blobs, names, limits, total)
                check_decodes(blobs, names)  # within the budgets: now decoding them is bounded
                names, blobs = [], []
        check_images(blobs, names, limits, total)
        check_decodes(blobs, names)
    except (BudgetExceeded, DataError) as exc:
        raise DatasetError(_said(f"cannot register {shown or path}: {exc}", path, shown)) from None


def pack_folder(folder: Path, dest: Path, settings: Settings) -> None:
    """Write ``folder`` to ``dest`` as a .tar.gz that depends on its files alone (members in name order, owners,
    times and permissions made the same, gzip without a time stamp), so adding one folder twice stores one archive. Hidden files
    and folders stay out (no reading counts them); a link is stored as a link and a FIFO as itself, never
    followed or read (the reading names them). Stops at ``CGAN_MAX_DATASET_BYTES`` of file data or
    ``CGAN_MAX_DATASET_ENTRIES`` members."""
    limits = settings.dataset_limits()
    seen = {"bytes": 0, "entries": 0}

    def normalised(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if is_hidden(info.name.partition("/")[2]):
            return None
        seen["entries"] += 1
        seen["bytes"] += info.size if info.isfile() else 0
        if seen["bytes"] > limits.archive_bytes:
            raise DatasetError(f"{folder} holds more than {limits.archive_bytes} bytes of files (CGAN_MAX_DATASET_BYTES)")
        if seen["entries"] > limits.entries:
            raise DatasetError(f"{folder} holds more than {limits.entries} files and folders (CGAN_MAX_DATASET_ENTRIES)")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() else 0o644  # permissions are the copy's, not the data's
        return info

    top = folder.resolve().name
    top = top if top and not top.startswith(".") else "dataset"  # the archive's own top folder, as `tar czf x.tar.gz folder` has it
    try:
        with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
            with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(folder, arcname=top, filter=normalised)  # lstat: a link to a folder is not entered
    except OSError as exc:  # no permission on a file, one that shrank while read
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        raise DatasetError(f"cannot pack {folder}:{where} {exc.strerror or exc}") from None


def add(store: ObjectStore, settings: Settings, name: str, path: Path, skipped: Skipped | None = None) -> DatasetEntry:
    """Check, upload and register ``path`` (an archive, or a folder packed by :func:`pack_folder`) as dataset
    ``name`` (replacing an earlier registration); ``skipped`` collects what the reading passed over (files that
    are no image, class folders without one)."""
    if name in BUILTIN_DATASETS:
        raise DatasetError(f"dataset name {name!r} is taken by the built-in dataset: choose another")
    if not NAME.match(name):
        raise DatasetError(f"invalid dataset name {name!r}: lower-case letters, digits, '-' and '_' (at most 64)")
    try:
        if not path.exists():
            raise DatasetError(f"{path} does not exist")
        folder = path.is_dir()
    except OSError as exc:  # a name too long, no permission on a parent
        raise DatasetError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if folder:
        with tempfile.TemporaryDirectory(prefix="cganctl-pack-") as scratch:
            packed = Path(scratch) / f"{name}.tar.gz"
            pack_folder(path, packed, settings)
            return _add_archive(store, settings, name, packed, skipped, shown=path)
    return _add_archive(store, settings, name, path, skipped)


def _add_archive(store: ObjectStore, settings: Settings, name: str, path: Path, skipped: Skipped | None, shown: Path | None = None) -> DatasetEntry:
    """``shown``: the folder that ``path`` packs, named in messages and as the source."""
    suffix = archive_suffix(path.name)
    try:
        if suffix is None or not path.is_file():
            raise DatasetError(f"{path} is not a folder or a {ARCHIVES_SAID} file")
        size = path.stat().st_size
    except OSError as exc:  # a name too long, no permission on a parent
        raise DatasetError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if size > settings.max_dataset_bytes:
        raise DatasetError(f"{path} is {size} bytes, above the maximum of {settings.max_dataset_bytes} (CGAN_MAX_DATASET_BYTES)")
    splits = _splits(path, settings, skipped, shown)
    sha = _sha256(path)
    key = f"{PREFIX}{name}/{sha}{suffix}"
    if not store.exists(key):
        store.put_file(key, path, content_type="application/x-tar")
    entry = DatasetEntry(name=name, key=key, sha256=sha, size=size, splits=splits, source=f"{shown.resolve().name}/" if shown else path.name, added_at=utcnow().isoformat())
    store.put_bytes(index_key(name), json.dumps(dataclasses.asdict(entry), indent=2).encode(), content_type="application/json")
    return entry


def from_uri(uri: str, settings: Settings, store: ObjectStore, *, flag: str) -> str:
    """``s3://BUCKET/KEY`` -> ``store:KEY`` when BUCKET is the project's and KEY an archive that exists."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not settings.s3_bucket:
        raise DatasetError(f"{flag} {uri}: s3:// datasets need the project's bucket (CGAN_S3_BUCKET); this deployment has a local store")
    if bucket != settings.s3_bucket:
        raise DatasetError(f"{flag} {uri}: only objects in the project's bucket s3://{settings.s3_bucket} can be read")
    if not key or archive_suffix(key) is None:
        raise DatasetError(f"{flag} {uri}: expected a {ARCHIVES_SAID} archive of an ImageFolder tree")
    try:
        size = store.size(key)
    except NotFound:
        raise DatasetError(f"{flag} {uri} does not exist") from None
    except ValueError as exc:  # an invalid key
        raise DatasetError(f"{flag} {uri}: {exc}") from None
    if size > settings.max_dataset_bytes:
        raise DatasetError(f"{flag} {uri} is {size} bytes, above the maximum of {settings.max_dataset_bytes} (CGAN_MAX_DATASET_BYTES)")
    return STORE_SCHEME + key


def indexed_splits(ref: str, store: ObjectStore) -> dict[str, dict[str, int]] | None:
    """A registered archive's counts per split from its index (no download); None when no index describes ``ref``."""
    key = ref.removeprefix(STORE_SCHEME)
    if not _CONTENT_KEY.match(key):
        return None
    entry = get(store, key.removeprefix(PREFIX).split("/", 1)[0])
    return entry.splits if entry is not None and entry.key == key else None


def local_copy(ref: str, settings: Settings, store: ObjectStore) -> Path:
    """The local file holding ``store:KEY``: downloaded once into the dataset cache, size- and content-checked."""
    key = ref.removeprefix(STORE_SCHEME)
    suffix = archive_suffix(key) or ".tar"
    cache = settings.data_dir / "cache" / "datasets"
    target = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}{suffix}"
    size = store.size(key)
    if target.is_file() and target.stat().st_size == size:
        return target
    if size > settings.max_dataset_bytes:
        raise DatasetError(f"dataset {ref} is {size} bytes, above the maximum of {settings.max_dataset_bytes} (CGAN_MAX_DATASET_BYTES)")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            part = Path(tmp) / "archive"
            store.download(key, part)
            match = _CONTENT_KEY.match(key)
            if match and _sha256(part) != match["sha"]:
                raise DatasetError(f"dataset {ref}: the downloaded archive does not match the sha256 in its key")
            if part.stat().st_size > settings.max_dataset_bytes:
                raise DatasetError(f"dataset {ref} is above the maximum of {settings.max_dataset_bytes} bytes (CGAN_MAX_DATASET_BYTES)")
            part.replace(target)
    except OSError as exc:  # a full or read-only disk: say where, on which host's setting
        raise CganError(f"dataset {ref}: cannot copy it ({size} bytes) into this worker's dataset cache {cache} (CGAN_DATA_DIR): {exc.strerror or exc}") from None
    return target


def describe(entry: DatasetEntry) -> dict[str, Any]:
    return dict(dataclasses.asdict(entry), classes=entry.classes, images={split: sum(c.values()) for split, c in entry.splits.items()})
