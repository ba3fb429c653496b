"""Which model a job uses: the weights shipped with ``cganmodel`` or a version a train job registered.

Read without importing torch: a model's metadata (kind, classes, preset, ...) is JSON beside its
safetensors file, so the CLI validates labels before anything heavy is loaded.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput, ServiceUnavailable
from .records import aware_utc, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

BUILTIN_PREFIX = "builtin:"
# Shipped models, their versions in order: NAME:1 is the first file stem, NAME:2 the second, ...;
# NAME alone means the last. A new version is added beside the old ones (specs that name NAME:1 keep working).
BUILTIN_FILES = {
    "default": (
        "default-generator", "default-generator-v2", "default-generator-v3", "default-generator-v4",
        "default-generator-v5", "default-generator-v6", "default-generator-v7", "default-generator-v8",
    ),
    "default-classifier": ("default-classifier",),
}


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    name: str
    version: int
    kind: str
    job_id: str | None
    weights_key: str
    meta: dict
    created_at: datetime | None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def weights_dir() -> Path:
    """``cganmodel/weights`` located without executing ``cganmodel`` (which would import torch)."""
    spec = importlib.util.find_spec("cganmodel")
    assert spec is not None and spec.submodule_search_locations, "cganmodel is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def aliased(records: list[ModelRecord]) -> set[str]:
    """Refs that a bare name resolves to (its newest version), where the name has more than one version:
    ``default:5`` for ``default``. What ``models list`` and the dashboard mark."""
    newest: dict[str, int] = {}
    for m in records:
        newest[m.name] = max(newest.get(m.name, 0), m.version)
    return {f"{name}:{version}" for name, version in newest.items() if version > 1}


def builtin_versions(name: str) -> list[ModelRecord]:
    """Every shipped version of ``name`` whose files are installed, oldest first."""
    records = []
    for version, stem in enumerate(BUILTIN_FILES.get(name, ()), start=1):
        meta_path = weights_dir() / f"{stem}.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            records.append(ModelRecord(name, version, meta["kind"], None, f"{BUILTIN_PREFIX}{stem}.safetensors", meta, None))
    return records


def builtin_weights_path(record: ModelRecord) -> Path | None:
    """The installed weights file of a shipped model's record; None for a trained (object-store) model."""
    if not record.weights_key.startswith(BUILTIN_PREFIX):
        return None
    return weights_dir() / record.weights_key[len(BUILTIN_PREFIX) :]


def builtin_model(name: str, version: int | None = None) -> ModelRecord | None:
    """A shipped model: ``version`` of ``name``, or its latest; None when there is no such version."""
    records = builtin_versions(name)
    if version is None:
        return records[-1] if records else None
    return next((r for r in records if r.version == version), None)


def parse_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    if not name:
        raise InvalidInput(f"invalid model reference {ref!r}: expected NAME or NAME:VERSION")
    if version == "latest" or (version == "" and ":" not in ref):
        return name, None
    if version == "":
        raise InvalidInput(f"invalid model reference {ref!r}: nothing after ':' (write NAME, NAME:VERSION or NAME:latest)")
    if not (version.isascii() and version.isdigit()):
        raise InvalidInput(f"invalid model version in {ref!r}: expected a number or 'latest'")
    if int(version) == 0:
        raise InvalidInput(f"invalid model version in {ref!r}: versions start at 1")
    if len(version) > 9:  # the table's versions are 32-bit integers
        raise InvalidInput(f"invalid model version in {ref!r}: no model has that many versions")
    return name, int(version)


class ModelRegistry:
    """Shipped models (read from ``cganmodel/weights``) and versions registered by train jobs (``models`` table).

    Through SQLAlchemy, imported on first use; ``scheduler.lean.LeanModelRegistry`` reads the same
    table with the database driver alone (the submit hot path) by overriding :meth:`get` and :meth:`registered`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        from sqlalchemy.orm import Session

        return Session(self.engine, expire_on_commit=False)

    def register(self, *, name: str, kind: str, job_id: str | None, weights_key: str, meta: dict) -> ModelRecord:
        """Add the next version of ``name``. A job registers at most one version (a retried task reuses it)."""
        from sqlalchemy import func, select
        from sqlalchemy.exc import IntegrityError

        from .db import Model

        for _ in range(5):
            with self._session() as session:
                existing = session.scalars(select(Model).where(Model.name == name, Model.job_id == job_id)).first()
                if existing is not None and job_id is not None:
                    return _record(existing)
                latest = session.scalar(select(func.max(Model.version)).where(Model.name == name)) or 0
            row = Model(name=name, version=latest + 1, kind=kind, job_id=job_id, weights_key=weights_key, meta=meta, created_at=utcnow())
            try:
                with self._session() as session, session.begin():
                    session.add(row)
                return _record(row)
            except IntegrityError:
                continue
        raise ServiceUnavailable(f"could not register a new version of model {name!r}")

    def get(self, name: str, version: int | None = None) -> ModelRecord | None:
        """A registered version (the latest when ``version`` is None), or None."""
        from sqlalchemy import select

        from .db import Model

        query = select(Model).where(Model.name == name)
        query = query.where(Model.version == version) if version else query.order_by(Model.version.desc())
        with self._session() as session:
            row = session.scalars(query.limit(1)).first()
            return _record(row) if row else None

    def registered(self) -> list[ModelRecord]:
        from sqlalchemy import select

        from .db import Model

        with self._session() as session:
            return [_record(r) for r in session.scalars(select(Model).order_by(Model.name, Model.version))]

    def resolve(self, ref: str, kind: str) -> ModelRecord:
        """A model reference (``NAME``, ``NAME:VERSION``, ``NAME:latest``) -> one concrete version."""
        name, version = parse_ref(ref)
        if name in BUILTIN_FILES:  # reserved: train jobs cannot register these names (submission.RESERVED_NAMES)
            found = builtin_model(name, version)
        else:
            found = self.get(name, version)
        if found is None:
            registered = self.registered()
            versions = [m.version for m in (builtin_versions(name) if name in BUILTIN_FILES else registered) if m.name == name]
            if version is not None and versions:  # the name exists, not this version
                raise InvalidInput(f"model {name} has no version {version}; its versions: {', '.join(map(str, versions))} (cganctl models list)")
            known = sorted({m.name for m in registered} | {n for n in BUILTIN_FILES if builtin_model(n)})
            raise InvalidInput(f"unknown model {ref!r}; known models: {', '.join(known) or 'none'}")
        if found.kind != kind:
            raise InvalidInput(f"model {found.ref} is a {found.kind}, not a {kind}")
        return found

    def all(self) -> list[ModelRecord]:
        builtins = [m for n in BUILTIN_FILES for m in builtin_versions(n)]
        return builtins + self.registered()


def _record(row: Any) -> ModelRecord:
    return ModelRecord(row.name, row.version, row.kind, row.job_id, row.weights_key, row.meta, aware_utc(row.created_at))
