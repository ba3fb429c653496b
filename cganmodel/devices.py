"""Device selection, one rule: ``auto`` is CUDA when there is one, else the CPU."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` if available else ``cpu``; an explicit CUDA device without CUDA is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def module_device(module: torch.nn.Module) -> torch.device | None:
    """The device of a module's first parameter (None for a module without parameters)."""
    p = next(module.parameters(), None)
    return None if p is None else p.device
