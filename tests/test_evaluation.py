"""evaluate_generator / reference_stats with a stand-in generator and a tiny trained classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cganmodel.evaluation as evaluation
from cganmodel.classifier import ClassifierConfig
from cganmodel.data import ImageData
from cganmodel.evaluation import evaluate_generator, reference_stats
from cganmodel.fid import stats_from_bytes, stats_to_bytes
from cganmodel.train_classifier import ClassifierTrainConfig, ClassifierTrainer

torch.set_num_threads(1)

CLASSES = ["red", "green", "blue"]


def separable_data(per_class: int = 16) -> ImageData:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = rng.integers(0, 120, size=(len(labels), 32, 32, 3))
    images[np.arange(len(labels)), :, :, labels] += 120
    return ImageData(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels), CLASSES)


class StandInGenerator(nn.Module):
    """G(z, y): noisy images whose dominant channel is y (like the data above)."""

    z_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.noise = nn.Linear(self.z_dim, 3 * 32 * 32)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        base = torch.nn.functional.one_hot(y, 3).float()[:, :, None, None] * 0.9 - 0.3
        return (base + 0.2 * self.noise(z).view(-1, 3, 32, 32)).clamp(-1, 1)


class FakeInception:
    """Cheap stand-in for InceptionFeatures (the real one is covered in test_fid.py)."""

    name = "inception"
    dim = 3
    description = "channel means"
    resize = "none"

    def __init__(self, device: object = "cpu") -> None:
        pass

    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = 50, on_batch: object = None) -> np.ndarray:
        return np.asarray(images, dtype=np.float64).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def data() -> ImageData:
    return separable_data()


@pytest.fixture(scope="module")
def classifier(data: ImageData) -> nn.Module:
    cfg = ClassifierConfig(num_classes=3, classes=CLASSES, width=4)
    tcfg = ClassifierTrainConfig(steps=30, batch_size=16, lr=0.05, device="cpu")
    trainer = ClassifierTrainer(cfg, tcfg, data)
    trainer.run()
    return trainer.model.eval()


def test_reference_stats_keys_and_subset(data: ImageData, classifier: nn.Module) -> None:
    progress: list[dict] = []
    stats = reference_stats(data, classifier=classifier, batch_size=20, on_progress=progress.append)
    assert int(stats["count"][0]) == 48 and stats["class_counts"].tolist() == [16, 16, 16]
    assert stats["classifier/mu"].shape == (32,) and stats["classifier/sigma"].shape == (32, 32)
    for i in range(3):
        assert stats[f"classifier/class{i}/sigma"].shape == (32, 32)
    assert progress[-1] == {"stage": "reference/classifier", "done": 48, "total": 48}
    assert int(reference_stats(data, classifier=classifier, max_images=10)["count"][0]) == 10
    with pytest.raises(ValueError, match="classifier"):
        reference_stats(data)


def test_evaluate_generator_metrics_and_grid(data: ImageData, classifier: nn.Module) -> None:
    reference = stats_from_bytes(stats_to_bytes(reference_stats(data, classifier=classifier)))
    torch.manual_seed(0)
    G = StandInGenerator()
    stages: set[str] = set()
    metrics, png = evaluate_generator(
        G, CLASSES, classifier=classifier, samples_per_class=12, seed=3, reference=reference,
        batch_size=10, on_progress=lambda p: stages.add(p["stage"]),
    )
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert metrics["label_accuracy"] >= 0.9
    assert set(metrics["label_accuracy_per_class"]) == set(CLASSES)
    assert metrics["classifier_fid"] > 0 and set(metrics["classifier_intra_fid"]) == set(CLASSES)
    intra = list(metrics["classifier_intra_fid"].values())
    assert metrics["classifier_intra_fid_mean"] == pytest.approx(np.mean(intra))
    protocol = metrics["protocol"]
    assert protocol["num_samples"] == 36 and protocol["samples_per_class"] == 12 and protocol["seed"] == 3
    assert protocol["reference_images"] == 48 and protocol["z_dim"] == 8
    assert set(protocol["feature_extractors"]) == {"classifier"}
    assert stages == {"generate", "classify", "features/classifier"}

    again, png_again = evaluate_generator(
        G, CLASSES, classifier=classifier, samples_per_class=12, seed=3, reference=reference
    )
    assert again == metrics and png_again == png  # batching does not change the samples
    other, _ = evaluate_generator(G, CLASSES, classifier=classifier, samples_per_class=12, seed=4, reference=reference)
    assert other["classifier_fid"] != metrics["classifier_fid"]
    assert protocol["truncation"] is None


def test_evaluate_generator_samples_at_a_truncation(data: ImageData, classifier: nn.Module) -> None:
    """``truncation`` draws the noise as a generate job does (``sample_noise``); None is the untruncated draw."""
    from cganmodel.sampling import sample_noise

    reference = reference_stats(data, classifier=classifier)
    torch.manual_seed(0)
    G = StandInGenerator()
    seen: list[torch.Tensor] = []
    G.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    plain, _ = evaluate_generator(G, CLASSES, classifier=classifier, samples_per_class=12, seed=3, reference=reference)
    assert torch.equal(torch.cat(seen), torch.randn(36, G.z_dim, generator=torch.Generator().manual_seed(3)))
    seen.clear()
    cut, _ = evaluate_generator(G, CLASSES, classifier=classifier, samples_per_class=12, seed=3, truncation=0.5, reference=reference)
    z = torch.cat(seen)
    assert torch.equal(z, sample_noise(36, G.z_dim, torch.Generator().manual_seed(3), 0.5)) and z.abs().max() <= 0.5
    assert cut["protocol"]["truncation"] == 0.5 and cut["classifier_fid"] != plain["classifier_fid"]


def test_evaluate_generator_inception_wiring(
    data: ImageData, classifier: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluation, "InceptionFeatures", FakeInception)
    G = StandInGenerator()
    overall_only = reference_stats(data, classifier=classifier, inception=True)
    assert "inception/mu" in overall_only and "inception/class0/mu" not in overall_only
    metrics, _ = evaluate_generator(
        G, CLASSES, classifier=classifier, samples_per_class=4, seed=0, reference=overall_only, inception=True
    )
    assert "inception_fid" in metrics and "inception_intra_fid" not in metrics
    assert set(metrics["protocol"]["feature_extractors"]) == {"classifier", "inception"}

    per_class = reference_stats(data, inception=True, inception_per_class=True)
    metrics, _ = evaluate_generator(
        G, CLASSES, classifier=None, samples_per_class=4, seed=0, reference=per_class, inception=True
    )
    assert set(metrics["inception_intra_fid"]) == set(CLASSES) and "label_accuracy" not in metrics


def test_evaluate_generator_refuses_inconsistent_requests(data: ImageData, classifier: nn.Module) -> None:
    G = StandInGenerator()
    metrics, _ = evaluate_generator(G, CLASSES, classifier=classifier, samples_per_class=1, seed=0)
    assert set(metrics) == {"label_accuracy", "label_accuracy_per_class", "protocol"}
    with pytest.raises(ValueError, match="reference"):
        evaluate_generator(G, CLASSES, classifier=classifier, samples_per_class=4, seed=0, inception=True)
    no_inception = reference_stats(data, classifier=classifier)
    with pytest.raises(ValueError, match="no inception features"):
        evaluate_generator(
            G, CLASSES, classifier=classifier, samples_per_class=4, seed=0, reference=no_inception, inception=True
        )
