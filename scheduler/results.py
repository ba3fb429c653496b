"""`cganctl results download`: fetch a generate job's shards, verify them against the manifest, unpack;
or a train job's model (weights + model.json, loss curve, samples) and an evaluate job's metrics and grid."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from pathlib import Path

from pydantic import ValidationError

from .errors import CganError, InvalidInput, NotFound
from .manifest import Manifest
from .records import status_phrase


class DamagedResult(CganError):
    """A stored result that does not match its manifest (a file changed or gone): exit 1, like a failed job."""

    exit_code = 1


class ChecksumMismatch(DamagedResult):
    pass


class UnsafeDestination(CganError):
    exit_code = 2


def refuse_links(dest: Path) -> None:
    """Refuse ``dest`` if it, or anything already inside it, is a symbolic link (nothing is written through one:
    a link planted where the user writes would redirect the files); the message names the real folder."""
    if dest.is_symlink():
        raise UnsafeDestination(f"--to {dest} is a symbolic link (to {dest.resolve()}): give the folder itself, e.g. --to {dest.resolve()}")
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


def _write_error(dest: Path, exc: OSError) -> CganError:
    """A destination that cannot be written is bad input (exit 2); a disk that fills up midway is not (1)."""
    bad = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in (dest, *dest.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # e.g. --to afile/sub: "File exists" says nothing of which file
            return InvalidInput(f"could not write to {dest}: {blocker} is a file, not a folder")
    return (InvalidInput if bad else CganError)(f"could not write to {dest}: {exc.strerror or exc}")


def _refuse_non_empty(dest: Path) -> None:
    """One job's results per folder: files of two jobs in one folder would mix their shards and overwrite
    each other's images (every job numbers its keys from 0)."""
    if dest.is_dir():
        entries = sorted(p.name for p in dest.iterdir())
        if entries:
            raise InvalidInput(
                f"--to {dest} is not empty ({len(entries)} entries, e.g. {entries[0]!r}): download each job into a new or "
                "empty folder (two jobs in one folder would mix their shards and overwrite each other's images)"
            )


def download(service, job_id: str, dest: Path, layout: str) -> str:
    """Fetch into a staging folder beside ``dest`` and rename it to ``dest`` once everything is verified:
    ``dest`` holds the whole download or nothing (an error or Ctrl-C midway removes the staging folder)."""
    dest = Path(dest)
    job = service.get(job_id)
    if job.status != "succeeded":
        raise InvalidInput(f"job {job.id} {status_phrase(job.status)}: its results are complete only once it succeeded")
    if layout != "webdataset" and job.kind != "generate":
        raise InvalidInput(f"--layout {layout} is for generate jobs, not {job.kind} jobs (job {job.id})")
    store = service.runtime.store
    manifest = manifest_bytes = None
    if job.kind == "generate":
        manifest_bytes = store.get_bytes(job.artifacts["manifest"])
        try:
            manifest = Manifest.from_bytes(manifest_bytes)
        except ValidationError as exc:  # e.g. an unsafe file name
            first = exc.errors()[0]
            raise InvalidInput(f"manifest of job {job.id} is invalid: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    refuse_links(dest)
    _refuse_non_empty(dest)
    staging: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # a folder of this download's own: two downloads into one --to at once never share (or delete) one; made
        # by mkdir (the umask's permissions, as --to would get), not mkdtemp (0700: a shared data folder nobody else reads)
        staging = dest.parent / f".{dest.name}.partial-{job.id[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        if manifest is None:
            summary = _download_files(store, job, staging)
        else:
            summary = _download(store, manifest, manifest_bytes or b"", staging, layout)
        try:
            if dest.is_dir():
                dest.rmdir()  # empty (checked above); not empty now: OSError, nothing replaced
            staging.rename(dest)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another download (or a writer) filled it meanwhile
                raise InvalidInput(f"--to {dest} was written by someone else while this download ran (another download of "
                                   "the same folder?): nothing of this one was put there") from None
            raise
    except CganError:
        raise
    except OSError as exc:
        raise _write_error(dest, exc) from None
    except ValueError as exc:  # a link met while unpacking, an unsafe member name
        raise UnsafeDestination(str(exc)) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return summary.replace("{dest}", str(dest))


def job_files(store, job) -> dict[str, str]:
    """The files a train or evaluate job's download holds: name in the folder -> object key.

    train: everything under its ``model/`` (the weights and ``model.json``, which loading them needs), its loss
    curve and sample grid; evaluate: ``metrics.json`` and ``samples.png``."""
    artifacts = job.artifacts or {}
    keys = [artifacts.get("metrics"), artifacts.get("samples"), artifacts.get("loss_curve")]
    if job.kind == "train" and artifacts.get("model"):
        keys += list(store.list(artifacts["model"].rsplit("/", 1)[0] + "/"))
    return {key.rsplit("/", 1)[1]: key for key in keys if isinstance(key, str)}


def _download_files(store, job, dest: Path) -> str:
    files = job_files(store, job)
    for name, key in sorted(files.items()):
        store.download(key, _safe_target(dest, dest / name))
    return f"{len(files)} files of {job.kind} job {job.id} saved in {{dest}}: {', '.join(sorted(files))}"


def _download(store, manifest: Manifest, manifest_bytes: bytes, dest: Path, layout: str) -> str:
    shard_dir = dest if layout == "webdataset" else dest / ".shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in manifest.files:
        path = _safe_target(dest, shard_dir / entry.name)
        try:
            store.download(entry.key, path)
        except NotFound:
            raise DamagedResult(f"{entry.key}: listed in the job's manifest but missing from the store") from None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry.sha256:
            path.unlink()
            raise ChecksumMismatch(f"{entry.key}: sha256 {digest} does not match the manifest's {entry.sha256}")
        paths.append(path)
    if layout == "webdataset":
        _safe_target(dest, dest / "manifest.json").write_bytes(manifest_bytes)
        return f"{len(paths)} shards ({manifest.count} images) verified and saved in {{dest}}"
    from cganmodel.shards import unpack_to_imagefolder

    refuse_links(dest)
    unpack_to_imagefolder(paths, dest, manifest.classes)
    for path in paths:
        path.unlink()
    shard_dir.rmdir()
    _safe_target(dest, dest / "manifest.json").write_bytes(manifest_bytes)
    return f"{manifest.count} images verified and unpacked to {{dest}}/<class>/<key>.png"
