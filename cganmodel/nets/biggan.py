"""BigGAN-CIFAR-style conditional GAN (Brock et al. 2019), sized for one GPU and the repo's size limits.

Generator: z is split into ``len(g_widths)`` chunks (hierarchical latents): the first chunk goes
through a linear layer to the 4x4xC0 map, each up-block gets its own chunk concatenated with a
*shared* class embedding (``EMBED_DIM``). Every conditional BatchNorm of a block takes its gain and
bias from one linear projection of that vector (BigGAN's "shared embedding + hierarchical z").
Blocks are BN-ReLU-upsample-conv-BN-ReLU-conv with a 1x1 shortcut (run before the nearest
upsampling: the same result, 4x cheaper); then BN, ReLU, 3x3 conv to RGB, tanh.

Discriminator: the spectral-normalised projection discriminator of :mod:`cganmodel.nets.resnet`
(hinge loss), as in BigGAN's CIFAR model.

Width: the ``biggan`` preset uses 128 channels (half of BigGAN-CIFAR's 256): its full training
checkpoint (G, D, EMA, both Adam states) must travel to and from the GPU machine, and live in the
repo, under the 64 MiB / 16 MiB-a-file transfer limits; with 256 channels it would be about 125 MB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # the builders in cganmodel.gan pass their config
    from cganmodel.gan import GANConfig
from cganmodel.nets.resnet import ResNetDiscriminator, modulated_batch_norm, xavier_init

#: Size of the shared class embedding.
EMBED_DIM = 64


class ProjectedBatchNorm2d(nn.Module):
    """BatchNorm without affine parameters, then gain ``1 + W_g c`` and bias ``W_b c`` per sample.

    ``c`` is the block's conditioning vector (shared class embedding ++ its latent chunk).
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.proj = xavier_init(nn.Linear(cond_dim, 2 * channels))  # BigGAN: non-zero, gains start near 1

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gain, bias = self.proj(cond).chunk(2, dim=1)
        return modulated_batch_norm(self.bn, x, 1 + gain, bias)


class BigGANBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ProjectedBatchNorm2d(cin, cond_dim)
        self.conv1 = xavier_init(nn.Conv2d(cin, cout, 3, padding=1))
        self.bn2 = ProjectedBatchNorm2d(cout, cond_dim)
        self.conv2 = xavier_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = xavier_init(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        s = F.interpolate(self.shortcut(x), scale_factor=2.0, mode="nearest")
        return h + s


class BigGANGenerator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        assert cfg.z_dim is not None and cfg.g_widths is not None
        widths = cfg.g_widths
        self.z_dim = cfg.z_dim
        self.num_classes = cfg.num_classes
        self.image_size = cfg.image_size
        self.c0 = widths[0]
        n_chunks = len(widths)  # one for the 4x4 map, one per up-block
        base, extra = divmod(cfg.z_dim, n_chunks)
        self.chunks = [base + (1 if i < extra else 0) for i in range(n_chunks)]
        self.shared = nn.Embedding(cfg.num_classes, EMBED_DIM)
        nn.init.normal_(self.shared.weight, std=0.02)
        self.linear = xavier_init(nn.Linear(self.chunks[0], 16 * widths[0]))
        self.blocks = nn.ModuleList(
            BigGANBlock(a, b, EMBED_DIM + k) for a, b, k in zip(widths[:-1], widths[1:], self.chunks[1:])
        )
        self.bn = nn.BatchNorm2d(widths[-1])
        self.to_rgb = xavier_init(nn.Conv2d(widths[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        zs = torch.split(z, self.chunks, dim=1)
        e = self.shared(y)
        h = self.linear(zs[0]).view(-1, self.c0, 4, 4)
        for block, zc in zip(self.blocks, zs[1:]):
            h = block(h, torch.cat([e, zc], dim=1))
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))


class BigGANDiscriminator(ResNetDiscriminator):
    """The SN-ResNet projection discriminator (see :mod:`cganmodel.nets.resnet`)."""
