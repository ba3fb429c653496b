"""Checkpoint (de)serialisation: safetensors for tensors, JSON for everything else, no pickle.

Every reader here raises :class:`CheckpointError` with a message naming the offending file,
e.g. ``checkpoint is corrupt: generator.safetensors: <reason>``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import safetensors.torch
import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint or exported model is missing, corrupt, truncated or does not match."""


def corrupt(name: str, reason: object) -> CheckpointError:
    return CheckpointError(f"checkpoint is corrupt: {name}: {reason}")


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise CPU copies of ``tensors`` as safetensors bytes."""
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return safetensors.torch.save(cpu, metadata=metadata)


def bytes_to_tensors(name: str, data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; any parse failure becomes a :class:`CheckpointError` naming ``name``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise corrupt(name, f"expected bytes, got {type(data).__name__}")
    try:
        return safetensors.torch.load(bytes(data))
    except Exception as exc:  # the Rust SafetensorError and friends
        raise corrupt(name, f"not a valid safetensors file ({exc})") from None


def safetensors_metadata(name: str, data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (the header is JSON after an 8-byte length)."""
    try:
        n = int.from_bytes(bytes(data[:8]), "little")
        header = json.loads(bytes(data[8 : 8 + n]))
        return dict(header.get("__metadata__") or {})
    except Exception as exc:
        raise corrupt(name, f"unreadable safetensors header ({exc})") from None


def read_json(name: str, data: bytes) -> Any:
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except Exception as exc:
        raise corrupt(name, f"not valid JSON ({exc})") from None


def check_state_dict(name: str, module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise a :class:`CheckpointError` unless ``tensors`` has exactly the module's keys and shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key in sorted(set(expected) & set(tensors)):
        if tuple(expected[key].shape) != tuple(tensors[key].shape):
            problems.append(
                f"{key} has shape {tuple(tensors[key].shape)}, the model needs {tuple(expected[key].shape)}"
            )
    if problems:
        raise CheckpointError(f"checkpoint does not match the model: {name}: " + "; ".join(problems[:6]))


def load_state_dict(name: str, module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Validate, then copy ``tensors`` into ``module`` (keeping the module's device and dtypes)."""
    check_state_dict(name, module, tensors)
    module.load_state_dict(dict(tensors), strict=True)


def check_config(name: str, saved: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise unless the saved config dict equals ``expected``; the message lists differing keys."""
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, expected {expected.get(k)!r}"
        for k in sorted(set(saved) | set(expected))
        if saved.get(k) != expected.get(k)
    ]
    if diffs:
        raise CheckpointError(f"checkpoint does not match the model: {name}: " + "; ".join(diffs))


def optimizers_to_bytes(optimizers: Mapping[str, torch.optim.Optimizer]) -> bytes:
    """Flatten optimizer state dicts into one safetensors blob.

    Tensors go in as ``<opt>/state/<param index>/<key>``; everything else (param groups, non-tensor
    state) goes into the single metadata entry ``optimizers`` as JSON (one key keeps the bytes
    deterministic: safetensors does not preserve the order of several metadata keys).
    """
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for opt_name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{opt_name}/state/{pid}/{key}"] = value
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        meta[opt_name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors_to_bytes(tensors, {"optimizers": json.dumps(meta, sort_keys=True)})


def load_optimizers(name: str, data: bytes, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Inverse of :func:`optimizers_to_bytes`; validates structure and shapes before loading."""
    tensors = bytes_to_tensors(name, data)
    try:
        meta = json.loads(safetensors_metadata(name, data)["optimizers"])
    except Exception as exc:
        raise corrupt(name, f"no readable optimizer description ({exc!r})") from None
    new_sds = {}
    for opt_name, opt in optimizers.items():
        if opt_name not in meta:
            raise CheckpointError(f"checkpoint does not match the model: {name}: no state for optimizer {opt_name!r}")
        try:
            info = meta[opt_name]
            groups = info["param_groups"]
            scalars = info["scalars"]
        except Exception as exc:
            raise corrupt(name, f"bad optimizer description for {opt_name!r} ({exc})") from None
        current = opt.state_dict()["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
            raise CheckpointError(
                f"checkpoint does not match the model: {name}: optimizer {opt_name!r} has a different parameter layout"
            )
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        params = [p for group in opt.param_groups for p in group["params"]]
        state: dict[int, dict[str, Any]] = {}
        prefix = f"{opt_name}/state/"
        for key, value in tensors.items():
            if not key.startswith(prefix):
                continue
            pid_str, _, field = key[len(prefix) :].partition("/")
            pid = int(pid_str)
            if pid >= len(params):
                raise corrupt(name, f"optimizer {opt_name!r} state for unknown parameter {pid}")
            if value.dim() > 0 and tuple(value.shape) != tuple(params[pid].shape):
                raise CheckpointError(
                    f"checkpoint does not match the model: {name}: {key} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(params[pid].shape)}"
                )
            state.setdefault(pid, {})[field] = value
        for pid_str, values in scalars.items():
            state.setdefault(int(pid_str), {}).update(values)
        new_sds[opt_name] = {"state": state, "param_groups": groups}
    for opt_name, sd in new_sds.items():
        try:
            optimizers[opt_name].load_state_dict(sd)
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint does not match the model: {name}: optimizer {opt_name!r}: {exc}"
            ) from None


def rng_to_str(state: torch.Tensor) -> str:
    """A ``torch.ByteTensor`` RNG state as base64 text (for JSON)."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def rng_from_str(name: str, text: str) -> torch.Tensor:
    try:
        return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8).clone()
    except Exception as exc:
        raise corrupt(name, f"bad RNG state ({exc})") from None
