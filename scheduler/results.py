"""`cganctl results download`: fetch a generate job's shards, verify them against the manifest, unpack."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import ValidationError

from .errors import CganError, InvalidInput
from .manifest import Manifest


class ChecksumMismatch(CganError):
    exit_code = 1


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
    shard_dir = dest if layout == "webdataset" else dest / ".shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in manifest.files:
        path = shard_dir / entry.name
        store.download(entry.key, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry.sha256:
            path.unlink()
            raise ChecksumMismatch(f"{entry.key}: sha256 {digest} does not match the manifest's {entry.sha256}")
        paths.append(path)
    if layout == "webdataset":
        (dest / "manifest.json").write_bytes(manifest_bytes)
        return f"{len(paths)} shards ({manifest.count} images) verified and saved in {dest}"
    from cganmodel.shards import unpack_to_imagefolder

    unpack_to_imagefolder(paths, dest, manifest.classes)
    for path in paths:
        path.unlink()
    shard_dir.rmdir()
    (dest / "manifest.json").write_bytes(manifest_bytes)
    return f"{manifest.count} images verified and unpacked to {dest}/<class>/<key>.png"
