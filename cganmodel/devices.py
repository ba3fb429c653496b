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


def describe_device(device: str | torch.device = "auto") -> str:
    """The hardware a run used, for its record: the GPU's name, or the CPU model and torch's thread count."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return f"CPU {cpu}, {torch.get_num_threads()} threads"
