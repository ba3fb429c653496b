"""SNGAN/BigGAN-style ResNet conditional GAN for 32x32 images.

Generator: z (z_dim) -> Linear -> 4x4xC0 -> up-blocks (class-conditional BatchNorm whose gain and
bias come from per-class embeddings, ReLU, nearest 2x upsampling, 3x3 convs, 1x1 shortcut) ->
BN, ReLU, 3x3 conv to RGB, tanh. The shortcut's 1x1 conv runs *before* the upsampling, which is
exactly equivalent (nearest upsampling commutes with 1x1 convs) and 4x cheaper.

Discriminator: spectral-normalised residual blocks (the first an "optimized" block without a
leading ReLU), average-pool downsampling to 8x8, ReLU, global sum pooling, a linear critic plus
the class projection term ``<embed(y), h>`` (Miyato & Koyama 2018). Trained with the hinge loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

if TYPE_CHECKING:  # the builders in cganmodel.gan pass their config
    from cganmodel.gan import GANConfig


def xavier_init(module: nn.Module) -> nn.Module:
    """Xavier-uniform init of a conv/linear/embedding weight, zero bias; returns the module."""
    nn.init.xavier_uniform_(module.weight)  # type: ignore[arg-type]
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)  # type: ignore[arg-type]
    return module


def modulated_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` (no affine) scaled by a per-sample ``gain`` and shifted by ``bias`` (both (N, C)).

    In eval mode the running statistics are folded into one per-sample affine map (one pass).
    """
    if bn.training:
        return bn(x) * gain[:, :, None, None] + bias[:, :, None, None]
    scale = gain * torch.rsqrt(bn.running_var + bn.eps)  # type: ignore[operator, arg-type]
    shift = bias - bn.running_mean * scale  # type: ignore[operator]
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without affine parameters, then per-class gain ``1 + g[y]`` and bias ``b[y]``."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return modulated_batch_norm(self.bn, x, 1 + self.gain(y), self.bias(y))


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(cin, num_classes)
        self.conv1 = xavier_init(nn.Conv2d(cin, cout, 3, padding=1))
        self.bn2 = ConditionalBatchNorm2d(cout, num_classes)
        self.conv2 = xavier_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = xavier_init(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y), inplace=True), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y), inplace=True))
        s = self.shortcut(x)
        # Add the nearest-upsampled shortcut by broadcasting over 2x2 cells (no upsampled copy).
        n, c, hh, ww = s.shape
        h.view(n, c, hh, 2, ww, 2).add_(s[:, :, :, None, :, None])
        return h


class ResNetGenerator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        assert cfg.z_dim is not None and cfg.g_widths is not None
        widths = cfg.g_widths
        self.z_dim = cfg.z_dim
        self.num_classes = cfg.num_classes
        self.image_size = cfg.image_size
        self.c0 = widths[0]
        self.linear = xavier_init(nn.Linear(cfg.z_dim, 16 * widths[0]))
        self.blocks = nn.ModuleList(GBlock(a, b, cfg.num_classes) for a, b in zip(widths[:-1], widths[1:]))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.to_rgb = xavier_init(nn.Conv2d(widths[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).view(-1, self.c0, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))


class DBlock(nn.Module):
    """Residual D block. ``first`` = optimized block (no ReLU before the first conv)."""

    def __init__(self, cin: int, cout: int, *, down: bool, first: bool) -> None:
        super().__init__()
        self.down = down
        self.first = first
        self.conv1 = spectral_norm(xavier_init(nn.Conv2d(cin, cout, 3, padding=1)))
        self.conv2 = spectral_norm(xavier_init(nn.Conv2d(cout, cout, 3, padding=1)))
        self.shortcut = spectral_norm(xavier_init(nn.Conv2d(cin, cout, 1))) if (cin != cout or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        s = x
        if self.down:
            h = F.avg_pool2d(h, 2)
            s = F.avg_pool2d(s, 2)  # pooling before the 1x1 conv: same result, 4x cheaper
        if self.shortcut is not None:
            s = self.shortcut(s)
        return h + s


class ResNetDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        assert cfg.d_widths is not None
        blocks = []
        cin, res = 3, cfg.image_size
        for i, w in enumerate(cfg.d_widths):
            down = res > 8
            blocks.append(DBlock(cin, w, down=down, first=(i == 0)))
            cin, res = w, (res // 2 if down else res)
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(xavier_init(nn.Linear(cin, 1)))
        self.embed = spectral_norm(xavier_init(nn.Embedding(cfg.num_classes, cin)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)
