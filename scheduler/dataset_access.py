"""One rule for where a dataset or reference comes from (``CGAN_DATASET_ROOTS``), checked at submit and again on the worker.

- ``cifar10``: torchvision's copy, downloaded by the worker.
- a registered dataset name (``cganctl datasets add``) or ``s3://<the project's bucket>/KEY.tar[.gz]``:
  an object in the project's store, ``store:KEY`` in the spec (``scheduler.datasets``). A bare name that is
  both registered and a path in the working folder is refused as ambiguous (write ``./NAME`` for the path).
- a path: resolved to an absolute path at submit (the spec stores it); ``''`` is refused. When roots apply
  (always on a fleet: default ``<data_dir>/datasets``; on the embedded default only if CGAN_DATASET_ROOTS
  is set) the real path (symbolic links resolved) must lie under one of them. It must be a folder or a
  regular file (a named pipe or a device would block a worker).
"""
from __future__ import annotations

import stat
from pathlib import Path

from . import datasets
from .datasets import BUILTIN_DATASETS
from .errors import InvalidInput
from .store import open_store


class DatasetRefused(InvalidInput):
    """A dataset/reference that this deployment may not read."""


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def resolve_source(source: str, roots: list[Path] | None, *, flag: str = "--dataset") -> str:
    """The source as a worker must see it (absolute path or a built-in name); raises DatasetRefused."""
    if source in BUILTIN_DATASETS:
        return source
    if not source or not source.strip():
        raise DatasetRefused(f"{flag} is empty: give cifar10, an ImageFolder directory or a .tar/.tar.gz of one")
    if source.startswith(("s3://", "store:")) or "://" in source:
        raise DatasetRefused(f"{flag} {source}: only cifar10, registered names, s3:// URIs in the project's bucket and paths are datasets")
    path = Path(source).expanduser().absolute()
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except FileNotFoundError:
        raise DatasetRefused(
            f"{flag}: data source {source!r} does not exist (use cifar10, an ImageFolder directory or a .tar/.tar.gz of one)"
        ) from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission error
        raise DatasetRefused(f"{flag} {source} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise DatasetRefused(f"{flag} {source} is neither a folder nor a regular file")
    if roots is not None and not _within(real, roots):
        shown = ", ".join(str(r) for r in roots)
        register = f"register it in the store with 'cganctl datasets add NAME {source}'"
        raise DatasetRefused(f"{flag} {source} lies outside the dataset roots ({shown}); {register}, set CGAN_DATASET_ROOTS or move it there")
    return str(path)


def resolve(source: str, settings, *, flag: str = "--dataset", store=None) -> str:
    """What a submit stores in the spec for ``source``: ``cifar10``, ``store:KEY`` or an absolute path."""
    if source.startswith("s3://"):
        return datasets.from_uri(source, settings, store or open_store(settings), flag=flag)
    if datasets.NAME.match(source) and source not in BUILTIN_DATASETS:
        entry = datasets.get(store or open_store(settings), source)
        if entry is not None:
            if Path(source).exists():
                raise DatasetRefused(f"{flag} {source} is both a registered dataset and a path here: write ./{source} for the path")
            return entry.ref
    return resolve_source(source, settings.allowed_dataset_roots, flag=flag)


def check_on_worker(source: str, settings, store=None) -> str:
    """The worker's own check of a spec's dataset (its settings, its file system, its store), as the
    local path or ``cifar10`` it then reads; raises DatasetRefused."""
    if source.startswith(datasets.STORE_SCHEME):
        return str(datasets.local_copy(source, settings, store or open_store(settings)))
    return resolve_source(source, settings.allowed_dataset_roots)
