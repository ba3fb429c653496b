"""MLP conditional GAN, faithful to the Keras CGAN tutorial (Keras-GAN ``cgan.py``).

Generator: ``noise * Embedding(num_classes, latent)(label)`` -> Dense 256/512/1024, each followed by
LeakyReLU(0.2) and BatchNorm(momentum=0.8 in Keras, i.e. 0.2 in PyTorch, eps 1e-3) -> Dense(H*W*3),
tanh, reshaped to the image.

Discriminator: ``flatten(image) * Embedding(num_classes, H*W*3)(label)`` -> Dense 512 x3 with
LeakyReLU(0.2); Dropout(0.4) after the 2nd and 3rd (as in the tutorial) -> one logit (the tutorial's
sigmoid is folded into BCE-with-logits).

Initialisation follows Keras: Glorot-uniform Dense kernels, zero biases, Embedding U(-0.05, 0.05).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the builders in cganmodel.gan pass their config
    from cganmodel.gan import GANConfig


def _keras_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.uniform_(m.weight, -0.05, 0.05)


class MLPGenerator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        assert cfg.z_dim is not None and cfg.g_widths is not None
        self.z_dim = cfg.z_dim
        self.num_classes = cfg.num_classes
        self.image_size = cfg.image_size
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim)
        layers: list[nn.Module] = []
        width = cfg.z_dim
        for w in cfg.g_widths:
            layers += [nn.Linear(width, w), nn.LeakyReLU(0.2), nn.BatchNorm1d(w, eps=1e-3, momentum=0.2)]
            width = w
        layers += [nn.Linear(width, 3 * cfg.image_size**2), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _keras_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.net(z * self.embed(y))
        return out.view(-1, 3, self.image_size, self.image_size)


class MLPDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        assert cfg.d_widths is not None
        n_in = 3 * cfg.image_size**2
        self.embed = nn.Embedding(cfg.num_classes, n_in)
        layers: list[nn.Module] = []
        width = n_in
        for i, w in enumerate(cfg.d_widths):
            layers += [nn.Linear(width, w), nn.LeakyReLU(0.2)]
            if i > 0:
                layers.append(nn.Dropout(0.4))
            width = w
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        _keras_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1) * self.embed(y)).squeeze(1)
