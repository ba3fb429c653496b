"""Building a model only after its weights are known to fit it: model metadata cannot make a worker
allocate memory (a forged width) before the weights are checked against it."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

from cganmodel.checkpoint import check_state_dict

M = TypeVar("M", bound=nn.Module)


def build_checked(name: str, build: Callable[[], M], tensors: Mapping[str, torch.Tensor]) -> M:
    """``build()`` once on the meta device (no memory), compare its parameter shapes with ``tensors``
    (read from the safetensors file, sized by it), and only then build it for real."""
    with torch.device("meta"):
        probe = build()
    check_state_dict(name, probe, tensors)
    return build()
