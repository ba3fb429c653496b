"""Architecture-level tests: shapes, ranges, config round-trips, conditioning, budgets, DiffAugment."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cganmodel.diffaug import diff_augment, parse_policy
from cganmodel.gan import PRESETS, GANConfig, build_discriminator, build_generator
from cganmodel.grid import labelled_grid_png, loss_curve_png
from cganmodel.nets import count_macs

torch.set_num_threads(1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shapes_and_ranges(preset: str) -> None:
    torch.manual_seed(0)
    cfg = GANConfig(preset=preset, num_classes=10)
    G, D = build_generator(cfg), build_discriminator(cfg)
    z = torch.randn(4, cfg.z_dim) * 3
    y = torch.tensor([0, 3, 7, 9])
    for mode in (True, False):
        G.train(mode)
        x = G(z, y)
        assert x.shape == (4, 3, 32, 32)
        assert x.min() >= -1 and x.max() <= 1
    out = D(x, y)
    assert out.shape == (4,) and torch.isfinite(out).all()


def test_preset_defaults() -> None:
    assert GANConfig(preset="mlp").z_dim == 100
    cfg = GANConfig(preset="resnet")
    assert cfg.z_dim == 128 and cfg.g_widths == (256, 128, 64, 32)


def test_config_round_trip_and_validation() -> None:
    cfg = GANConfig(preset="resnet", num_classes=3, classes=["a", "b", "c"], d_widths=(32, 64, 64, 64))
    assert GANConfig.from_dict(cfg.to_dict()) == cfg
    assert GANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        GANConfig(preset="dcgan")
    with pytest.raises(ValueError, match="class names"):
        GANConfig(num_classes=3, classes=["a", "b"])
    with pytest.raises(ValueError, match="16x16"):
        GANConfig(preset="resnet", image_size=16)
    with pytest.raises(ValueError, match="unknown GAN config keys"):
        GANConfig.from_dict({**cfg.to_dict(), "depth": 3})
    assert GANConfig(preset="resnet", image_size=16, g_widths=(64, 32, 16)).image_size == 16


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_label_changes_output(preset: str) -> None:
    torch.manual_seed(1)
    cfg = GANConfig(preset=preset, num_classes=4)
    G = build_generator(cfg).eval()
    if preset == "resnet":  # class gains/biases start at zero (SNGAN); give them some trained-like values
        for name, p in G.named_parameters():
            if ".gain." in name or ".bias.weight" in name:
                torch.nn.init.normal_(p, std=0.2)
    z = torch.randn(1, cfg.z_dim).repeat(4, 1)
    x = G(z, torch.arange(4))
    for i in range(1, 4):
        assert (x[i] - x[0]).abs().max() > 1e-3
    D = build_discriminator(cfg).eval()
    img = x[:1].repeat(4, 1, 1, 1)
    scores = D(img, torch.arange(4))
    assert len(set(scores.tolist())) == 4


def test_resnet_generator_budget() -> None:
    """The default generator must stay cheap: generating 50k images on a 2-core CPU ~ 1-2 min."""
    G = build_generator(GANConfig(preset="resnet")).eval()
    params = sum(p.numel() for p in G.parameters())
    macs = count_macs(G, torch.randn(1, 128), torch.zeros(1, dtype=torch.long))
    assert params < 3_000_000, params
    assert macs < 90_000_000, macs  # 87.9M MACs ~ 176 MFLOP per 32x32 image


def test_resnet_eval_fast_path_matches_training_math() -> None:
    """The folded inference batch norm equals the plain formula with running statistics."""
    from cganmodel.nets.resnet import ConditionalBatchNorm2d

    torch.manual_seed(0)
    bn = ConditionalBatchNorm2d(8, 3)
    torch.nn.init.normal_(bn.gain.weight)
    torch.nn.init.normal_(bn.bias.weight)
    bn.train()
    for _ in range(3):
        bn(torch.randn(16, 8, 4, 4) * 2 + 1, torch.randint(0, 3, (16,)))
    bn.eval()
    x, y = torch.randn(5, 8, 4, 4), torch.randint(0, 3, (5,))
    ref = (x - bn.bn.running_mean[:, None, None]) / torch.sqrt(bn.bn.running_var[:, None, None] + bn.bn.eps)
    ref = ref * (1 + bn.gain(y))[:, :, None, None] + bn.bias(y)[:, :, None, None]
    torch.testing.assert_close(bn(x, y), ref)


def test_mlp_matches_keras_layout() -> None:
    cfg = GANConfig(preset="mlp", num_classes=10)
    G, D = build_generator(cfg), build_discriminator(cfg)
    linears = [m for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [256, 512, 1024, 3072]
    bns = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(abs(b.momentum - 0.2) < 1e-9 and abs(b.eps - 1e-3) < 1e-9 for b in bns)
    assert G.embed.weight.shape == (10, 100) and D.embed.weight.shape == (10, 3072)
    assert [m.out_features for m in D.modules() if isinstance(m, torch.nn.Linear)] == [512, 512, 512, 1]
    assert sum(isinstance(m, torch.nn.Dropout) for m in D.modules()) == 2


def test_diffaugment() -> None:
    x = (torch.rand(6, 3, 32, 32) * 2 - 1).requires_grad_()
    a = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(0))
    b = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(0))
    c = diff_augment(x, "color,translation,cutout", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # translation alone moves content but keeps it (zero fill at the border)
    t = diff_augment(x.detach(), "translation", torch.Generator().manual_seed(3))
    assert t.shape == x.shape
    # cutout zeroes a 16x16 square per image (possibly clipped at the border)
    ones = torch.ones(4, 3, 32, 32)
    cut = diff_augment(ones, "cutout", torch.Generator().manual_seed(0))
    zeros = (cut[:, 0] == 0).sum(dim=(1, 2))
    assert ((zeros > 0) & (zeros <= 256)).all()
    assert parse_policy("") == []
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        parse_policy("color,zoom")


def test_grid_png_deterministic() -> None:
    rng = np.random.default_rng(0)
    imgs = {"cat": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
            "dog": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)}
    a, b = labelled_grid_png(imgs), labelled_grid_png(imgs)
    assert a == b
    im = Image.open(io.BytesIO(a))
    assert im.format == "PNG" and im.height == 2 * 34 + 2 and im.width > 3 * 34
    with pytest.raises(ValueError):
        labelled_grid_png({"x": np.zeros((1, 32, 32), dtype=np.uint8)})
    png = loss_curve_png([[10, 1.0, 2.0], [20, 0.5, 1.5]])
    assert Image.open(io.BytesIO(png)).size == (640, 320)


def test_a_grid_label_is_drawn_in_characters_the_font_has():
    """PIL's default font has no é (it drew a box), in either Unicode form: accents are dropped, other characters '?'."""
    import unicodedata

    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    plain = labelled_grid_png({"chat_e": images})
    assert labelled_grid_png({"chat_\u00e9": images}) == plain
    assert labelled_grid_png({unicodedata.normalize("NFD", "chat_\u00e9"): images}) == plain
    assert labelled_grid_png({"\u732b": images}) == labelled_grid_png({"?": images})
