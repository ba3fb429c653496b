"""generate(): determinism, order, truncation, classifier filtering, progress, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cganmodel.gan import GANConfig, build_generator
from cganmodel.sampling import GenerationError, generate, sample_noise, to_uint8

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G() -> nn.Module:
    torch.manual_seed(0)
    G = build_generator(GANConfig(preset="mlp", num_classes=3, g_widths=(32, 32, 32))).eval()
    nn.init.normal_(G.embed.weight)  # Keras' U(-0.05, 0.05) makes near-constant untrained images
    return G


class Brightness(nn.Module):
    """Stand-in classifier: class 0 = bright top-left corner, class 1 = dark, class 2 = never."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, :, :2, :2].mean(dim=(1, 2, 3)) - 0.03) * 100
        return torch.stack([s, -s, torch.zeros_like(s) - 5], dim=1)


def test_shapes_order_and_determinism(G) -> None:
    labels = [2, 0, 1, 1, 0, 2, 2]
    a = generate(G, labels, seed=5)
    b = generate(G, labels, seed=5)
    c = generate(G, labels, seed=6)
    assert a.images.shape == (7, 32, 32, 3) and a.images.dtype.name == "uint8"
    assert a.labels.tolist() == labels
    assert (a.images == b.images).all()
    assert (a.images != c.images).any()
    assert a.stats == {0: {"generated": 2, "accepted": 2}, 1: {"generated": 2, "accepted": 2},
                       2: {"generated": 3, "accepted": 3}}
    # the output is G(z_i, y_i) with z drawn up front from the seed, in the order of labels
    z = torch.randn(7, G.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = to_uint8(G(z, torch.tensor(labels))).numpy()
    assert (ref == a.images).all()
    # batching does not change the noise (tiny float differences between batch sizes at most)
    d = generate(G, labels, seed=5, batch_size=2)
    assert abs(d.images.astype(int) - a.images.astype(int)).max() <= 1


def test_label_conditions_output(G) -> None:
    """Position i gets z_i regardless of label, so the same seed with other labels changes images."""
    a = generate(G, [0, 0, 0], seed=1)
    b = generate(G, [1, 2, 0], seed=1)
    assert (a.images[0] != b.images[0]).any() and (a.images[1] != b.images[1]).any()
    assert (a.images[2] == b.images[2]).all()


def test_truncation() -> None:
    z = sample_noise(500, 16, torch.Generator().manual_seed(0), truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    z2 = sample_noise(500, 16, torch.Generator().manual_seed(0), truncation=0.5)
    assert torch.equal(z, z2)


def test_truncated_generation(G) -> None:
    a = generate(G, [0, 1], seed=3, truncation=0.7)
    assert (a.images == generate(G, [0, 1], seed=3, truncation=0.7).images).all()
    assert (a.images != generate(G, [0, 1], seed=3).images).any()
    with pytest.raises(ValueError, match="truncation"):
        generate(G, [0], seed=0, truncation=0)


def test_min_confidence_filters_and_is_deterministic(G) -> None:
    clf = Brightness()
    labels = [0, 1] * 10
    calls: list[int] = []
    out = generate(G, labels, seed=2, classifier=clf, min_confidence=0.9, batch_size=8, on_batch=calls.append)
    again = generate(G, labels, seed=2, classifier=clf, min_confidence=0.9, batch_size=8)
    assert (out.images == again.images).all() and out.stats == again.stats
    x = torch.from_numpy(out.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    probs = torch.softmax(clf(x), dim=1)
    assert (probs[torch.arange(20), torch.tensor(labels)] >= 0.9).all()
    for c in (0, 1):
        assert out.stats[c]["accepted"] >= 10 and out.stats[c]["generated"] >= out.stats[c]["accepted"]
    assert calls == sorted(calls) and calls[-1] == 20
    # without filtering the same seed gives the round-0 images; accepted round-0 images are kept
    plain = generate(G, labels, seed=2)
    x0 = torch.from_numpy(plain.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    ok0 = torch.softmax(clf(x0), dim=1)[torch.arange(20), torch.tensor(labels)] >= 0.9
    assert (out.images[ok0.numpy()] == plain.images[ok0.numpy()]).all()


def test_min_confidence_zero_accepts_all(G) -> None:
    out = generate(G, [0, 1, 2], seed=0, classifier=Brightness(), min_confidence=0.0)
    assert (out.images == generate(G, [0, 1, 2], seed=0).images).all()
    assert all(s == {"generated": 1, "accepted": 1} for s in out.stats.values())


def test_unreachable_confidence_raises(G) -> None:
    with pytest.raises(GenerationError, match=r"min_confidence=0.5.*class 2: 0 of \d+ candidates accepted"):
        generate(G, [2, 2], seed=0, classifier=Brightness(), min_confidence=0.5)
    with pytest.raises(GenerationError, match=r"redraw rounds \(frog: 0 of \d+ candidates accepted, 2 still missing\)"):
        generate(G, [2, 2], seed=0, classifier=Brightness(), min_confidence=0.5, class_names=["cat", "dog", "frog"])


def test_argument_errors(G) -> None:
    with pytest.raises(ValueError, match="labels must be in"):
        generate(G, [3], seed=0)
    with pytest.raises(ValueError, match="together"):
        generate(G, [0], seed=0, min_confidence=0.5)
    assert generate(G, [], seed=0).images.shape == (0, 32, 32, 3)


def test_modes_restored(G) -> None:
    clf = Brightness().train()
    G.train()
    try:
        generate(G, [0], seed=0, classifier=clf, min_confidence=0.0)
        assert G.training and clf.training
    finally:
        G.eval()
