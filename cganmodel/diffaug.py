"""DiffAugment (Zhao et al. 2020): differentiable colour / translation / cutout augmentations.

Applied identically in spirit to real and fake batches before the discriminator. All random
numbers come from an explicit ``torch.Generator`` (so training stays reproducible and resumable),
drawn on the generator's device (a CPU generator's draws are then moved to the batch's device; a
CUDA generator's stay there: no host round trip). Images are float NCHW in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cganmodel.presets import DIFFAUG_OPS, parse_policy

Aug = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _rand(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device).to(device=like.device, dtype=like.dtype)


def brightness(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x + (_rand((x.shape[0], 1, 1, 1), gen, x) - 0.5)


def saturation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), gen, x) * 2) + mean


def contrast(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), gen, x) + 0.5) + mean


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y, filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1), generator=gen, device=gen.device)
    tx = torch.randint(-sw, sw + 1, (n, 1), generator=gen, device=gen.device)
    rows = (torch.arange(h, device=gen.device)[None, :] + ty + 1).clamp(0, h + 1).to(x.device)  # index into padded
    cols = (torch.arange(w, device=gen.device)[None, :] + tx + 1).clamp(0, w + 1).to(x.device)
    padded = F.pad(x, [1, 1, 1, 1])
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ``ratio`` of the image size at a random centre per image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1), generator=gen, device=gen.device) - ch // 2
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1), generator=gen, device=gen.device) - cw // 2
    r = torch.arange(h, device=gen.device)[None, :]
    c = torch.arange(w, device=gen.device)[None, :]
    in_rows = (r >= oy) & (r < oy + ch)  # (N, H)
    in_cols = (c >= ox) & (c < ox + cw)  # (N, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(device=x.device, dtype=x.dtype)


POLICIES: dict[str, list[Aug]] = {
    "color": [brightness, saturation, contrast],
    "translation": [translation],
    "cutout": [cutout],
}
assert tuple(POLICIES) == DIFFAUG_OPS, "cganmodel.presets.DIFFAUG_OPS names the operations implemented here"


def diff_augment(x: torch.Tensor, policy: str, gen: torch.Generator) -> torch.Tensor:
    """Apply the comma-separated ``policy`` to the batch ``x``."""
    for name in parse_policy(policy):
        for aug in POLICIES[name]:
            x = aug(x, gen)
    return x
