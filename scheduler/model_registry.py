"""Which model a job uses: the weights shipped with ``cganmodel`` or a version a train job registered.

Read without importing torch: a model's metadata (kind, classes, preset, ...) is JSON beside its
safetensors file, so the CLI validates labels before anything heavy is loaded.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .errors import InvalidInput
from .jobs import JobTable, ModelRecord

BUILTIN_PREFIX = "builtin:"
BUILTIN_FILES = {"default": "default-generator", "default-classifier": "default-classifier"}


def weights_dir() -> Path:
    """``cganmodel/weights`` located without executing ``cganmodel`` (which would import torch)."""
    spec = importlib.util.find_spec("cganmodel")
    assert spec is not None and spec.submodule_search_locations, "cganmodel is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def builtin_model(name: str) -> ModelRecord | None:
    stem = BUILTIN_FILES.get(name)
    if stem is None:
        return None
    meta_path = weights_dir() / f"{stem}.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return ModelRecord(name, 1, meta["kind"], None, f"{BUILTIN_PREFIX}{stem}.safetensors", meta, None)


def parse_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    if not name:
        raise InvalidInput(f"invalid model reference {ref!r}: expected NAME or NAME:VERSION")
    if version in ("", "latest"):
        return name, None
    if not version.isdigit():
        raise InvalidInput(f"invalid model version in {ref!r}: expected a number or 'latest'")
    return name, int(version)


def resolve(table: JobTable, ref: str, kind: str) -> ModelRecord:
    """A model reference (``NAME``, ``NAME:VERSION``, ``NAME:latest``) -> one concrete version."""
    name, version = parse_ref(ref)
    record = builtin_model(name)
    if record is not None and version in (None, 1):
        found: ModelRecord | None = record
    else:
        found = table.get_model(name, version)
    if found is None:
        known = sorted({m.name for m in table.list_models()} | {n for n in BUILTIN_FILES if builtin_model(n)})
        raise InvalidInput(f"unknown model {ref!r}; known models: {', '.join(known) or 'none'}")
    if found.kind != kind:
        raise InvalidInput(f"model {found.ref} is a {found.kind}, not a {kind}")
    return found


def all_models(table: JobTable) -> list[ModelRecord]:
    builtins = [m for m in (builtin_model(n) for n in BUILTIN_FILES) if m is not None]
    return builtins + table.list_models()
