"""The manifest of a generate job (``jobs/<id>/manifest.json``): one type for the worker that writes it
and for ``cganctl results download`` that reads and verifies it."""
from __future__ import annotations

import json
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, field_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestFile(_Model):
    key: str  # object-store key of the shard
    name: str  # its file name (a plain name: no folders, never '.' or '..')
    sha256: str
    size: int
    count: int
    count_per_class: dict[str, int]
    shard_seed: int

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if name in ("", ".", "..") or PurePosixPath(name).name != name or "\\" in name:
            raise ValueError(f"unsafe file name {name!r}")
        return name


class ManifestModel(_Model):
    ref: str
    sha256: str
    preset: str | None


class Acceptance(_Model):
    generated: int
    accepted: int
    rate: float


class Manifest(_Model):
    job_id: str
    kind: str = "generate"
    format: str
    count: int
    count_per_class: dict[str, int]
    classes: list[str]
    model: ManifestModel
    seed: int
    seeding: str  # how the noise was seeded (cganmodel.seeding.describe_generate_seeding)
    spec: dict
    acceptance: dict[str, Acceptance] | None
    files: list[ManifestFile]

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        return cls.model_validate_json(data)
