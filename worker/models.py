"""Loading the models a job names (shipped or registered), once per worker process."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler.model_registry import ModelRecord, builtin_weights_path

if TYPE_CHECKING:
    from torch.nn import Module
from scheduler.runtime import Runtime

_lock = threading.Lock()
_cache: dict[tuple[str, str, str], "LoadedModel"] = {}


@dataclass(frozen=True)
class LoadedModel:
    record: ModelRecord
    module: Module  # in eval mode on `device`
    sha256: str
    device: str


def _weights(runtime: Runtime, record: ModelRecord) -> bytes:
    path = builtin_weights_path(record)
    return path.read_bytes() if path else runtime.store.get_bytes(record.weights_key)


def load(runtime: Runtime, ref: str, kind: str) -> LoadedModel:
    """The model ``ref`` ("NAME:VERSION") of ``kind`` ("generator" or "classifier"), cached."""
    record = runtime.models.resolve(ref, kind)
    cache_key = (kind, record.ref, record.weights_key)
    with _lock:
        if cache_key not in _cache:
            from cganmodel.devices import resolve_device

            if kind == "generator":
                from cganmodel.pretrained import load_generator as loader
            else:
                from cganmodel.classifier import load_classifier as loader
            weights = _weights(runtime, record)
            dev = str(resolve_device("auto"))
            module = loader(weights, record.meta).to(dev).eval()
            _cache[cache_key] = LoadedModel(record, module, hashlib.sha256(weights).hexdigest(), dev)
        return _cache[cache_key]
