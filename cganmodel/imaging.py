"""The one conversion between stored images (uint8, 0..255) and network tensors (float, [-1, 1]).

Stored and exchanged images are ``uint8`` NHWC (numpy or torch); the networks take and give float
NCHW in ``[-1, 1]``. Layout changes are explicit at the call site or in the two NHWC helpers.
"""
from __future__ import annotations

import numpy as np
import torch


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1], same layout."""
    return images.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output, float NCHW in [-1, 1] (clamped) -> uint8 NHWC 0..255 on the CPU, rounded to nearest."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def nhwc_to_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] on ``device`` (channels_last strides)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images shaped (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return to_float(t.to(device).permute(0, 3, 1, 2))
