"""`cganctl results download`: fetch a generate job's shards, verify them against the manifest, unpack."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import ValidationError

from .errors import CganError, InvalidInput
from .manifest import Manifest


class ChecksumMismatch(CganError):
    exit_code = 1


class UnsafeDestination(CganError):
    exit_code = 2


def refuse_links(dest: Path) -> None:
    """Refuse ``dest`` if it, or anything already inside it, is a symbolic link (nothing is written through one)."""
    if dest.is_symlink():
        raise UnsafeDestination(f"--to {dest} is a symbolic link: give a real folder")
    if dest.exists() and not dest.is_dir():
        raise UnsafeDestination(f"--to {dest} exists and is not a folder")
    for root, dirs, files in os.walk(dest, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                raise UnsafeDestination(f"{path} inside --to is a symbolic link: refusing to write through it")


def _safe_target(dest: Path, path: Path) -> Path:
    """``path`` (inside ``dest``), checked again just before writing: no component inside ``dest`` is a link."""
    current = dest
    for part in path.relative_to(dest).parts:
        current = current / part
        if current.is_symlink():
            raise UnsafeDestination(f"{current} inside --to is a symbolic link: refusing to write through it")
    return path


def download(service, job_id: str, dest: Path, layout: str) -> str:
    job = service.get(job_id)
    if job.kind != "generate":
        raise InvalidInput(f"job {job.id} is a {job.kind} job: only generate jobs have results to download")
    if job.status != "succeeded":
        raise InvalidInput(f"job {job.id} is {job.status}: its results are complete only once it succeeded")
    store = service.runtime.store
    manifest_bytes = store.get_bytes(job.artifacts["manifest"])
    try:
        manifest = Manifest.from_bytes(manifest_bytes)
    except ValidationError as exc:  # e.g. an unsafe file name
        first = exc.errors()[0]
        raise InvalidInput(f"manifest of job {job.id} is invalid: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    dest = Path(dest)
    try:
        return _download(store, manifest, manifest_bytes, dest, layout)
    except OSError as exc:
        raise CganError(f"could not write to {dest}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a link met while unpacking, an unsafe member name
        raise UnsafeDestination(str(exc)) from None


def _download(store, manifest: Manifest, manifest_bytes: bytes, dest: Path, layout: str) -> str:
    refuse_links(dest)
    shard_dir = dest if layout == "webdataset" else dest / ".shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    refuse_links(dest)
    paths = []
    for entry in manifest.files:
        path = _safe_target(dest, shard_dir / entry.name)
        store.download(entry.key, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry.sha256:
            path.unlink()
            raise ChecksumMismatch(f"{entry.key}: sha256 {digest} does not match the manifest's {entry.sha256}")
        paths.append(path)
    if layout == "webdataset":
        _safe_target(dest, dest / "manifest.json").write_bytes(manifest_bytes)
        return f"{len(paths)} shards ({manifest.count} images) verified and saved in {dest}"
    from cganmodel.shards import unpack_to_imagefolder

    refuse_links(dest)
    unpack_to_imagefolder(paths, dest, manifest.classes)
    for path in paths:
        path.unlink()
    shard_dir.rmdir()
    _safe_target(dest, dest / "manifest.json").write_bytes(manifest_bytes)
    return f"{manifest.count} images verified and unpacked to {dest}/<class>/<key>.png"
