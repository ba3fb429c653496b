"""Classifier: shapes, training, resume, export/load, refusing bad files. Tiny synthetic data only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from cganmodel.checkpoint import CheckpointError
from cganmodel.classifier import ClassifierConfig, build_classifier, evaluate_accuracy, load_classifier, predict_proba
from cganmodel.data import ImageData
from cganmodel.train_classifier import ClassifierTrainConfig, ClassifierTrainer

torch.set_num_threads(1)

CLASSES = ["red", "green", "blue"]


def separable_data(per_class: int = 16, seed: int = 0) -> ImageData:
    """Noisy images whose dominant colour channel is the label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = rng.integers(0, 120, size=(len(labels), 32, 32, 3))
    images[np.arange(len(labels)), :, :, labels] += 120
    return ImageData(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels), CLASSES)


def make_trainer(steps: int = 6) -> ClassifierTrainer:
    cfg = ClassifierConfig(num_classes=3, classes=CLASSES, width=4)
    tcfg = ClassifierTrainConfig(
        steps=steps, batch_size=16, lr=0.05, checkpoint_every=3, progress_every=2, device="cpu"
    )
    return ClassifierTrainer(cfg, tcfg, separable_data())


def test_shapes_and_config_round_trip() -> None:
    model = build_classifier(10, width=4)
    x = torch.zeros(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert model.features(x).shape == (2, 32) == (2, model.feature_dim)
    cfg = ClassifierConfig(num_classes=3, classes=CLASSES, width=8)
    assert ClassifierConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    tcfg = ClassifierTrainConfig(steps=7)
    assert ClassifierTrainConfig.from_dict(tcfg.to_dict()) == tcfg
    with pytest.raises(ValueError, match="unknown"):
        ClassifierConfig.from_dict({"num_classes": 3, "depth": 2})


def test_training_raises_accuracy_and_reports_progress() -> None:
    trainer = make_trainer(steps=30)
    data = trainer.data
    before = evaluate_accuracy(trainer.model, data)["accuracy"]
    progress: list[dict] = []
    checkpoints: list[int] = []
    result = trainer.run(on_progress=progress.append, on_checkpoint=lambda step, files: checkpoints.append(step))
    after = evaluate_accuracy(trainer.model, data)
    assert after["accuracy"] >= 0.9 > before
    assert set(after["per_class"]) == set(CLASSES) and after["count"] == 48
    assert result.step == 30 and not result.stopped
    assert set(progress[-1]) == {"step", "steps", "loss", "accuracy", "images_per_s"}
    assert progress[-1]["step"] == 30 and progress[-1]["loss"] < progress[0]["loss"]
    assert checkpoints == list(range(3, 31, 3))


def test_resume_matches_uninterrupted_run() -> None:
    saved: dict[int, dict[str, bytes]] = {}
    straight = make_trainer()
    straight.run(on_checkpoint=lambda step, files: saved.setdefault(step, files))
    assert set(saved[3]) == {"classifier.safetensors", "optim.safetensors", "state.json"}
    assert json.loads(saved[3]["state.json"])["step"] == 3

    resumed = make_trainer()
    resumed.load_checkpoint(saved[3])
    assert resumed.step == 3
    resumed.run()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_should_stop_and_export_load_round_trip() -> None:
    trainer = make_trainer()
    assert trainer.run(should_stop=lambda: trainer.step >= 2).stopped
    assert trainer.step == 2
    trainer.model.eval()
    weights, meta = trainer.export()
    meta = json.loads(json.dumps(meta))
    assert meta["kind"] == "classifier" and meta["classes"] == CLASSES and meta["steps"] == 2
    model = load_classifier(weights, meta)
    assert not model.training
    images = trainer.data.images[:5].numpy()
    probs = predict_proba(model, images, batch_size=2)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(probs, predict_proba(trainer.model, images), atol=1e-5)


def test_corrupt_or_mismatched_files_are_refused() -> None:
    trainer = make_trainer()
    weights, meta = trainer.export()
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_classifier(weights[: len(weights) // 2], meta)
    with pytest.raises(CheckpointError, match="has shape"):
        load_classifier(weights, {**meta, "config": {**meta["config"], "width": 8}})
    with pytest.raises(CheckpointError, match="kind"):
        load_classifier(weights, {**meta, "kind": "generator"})
    renamed = {f"x.{k}": v for k, v in safetensors.torch.load(weights).items()}
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_classifier(safetensors.torch.save(renamed), meta)

    files = trainer.checkpoint_files()
    with pytest.raises(CheckpointError, match="incomplete"):
        make_trainer().load_checkpoint({k: v for k, v in files.items() if k != "optim.safetensors"})
    with pytest.raises(CheckpointError, match="state.json: not valid JSON"):
        make_trainer().load_checkpoint({**files, "state.json": b"{not json"})
    with pytest.raises(CheckpointError, match="classifier.safetensors"):
        make_trainer().load_checkpoint({**files, "classifier.safetensors": b"\x00" * 40})
    other = ClassifierTrainer(
        ClassifierConfig(num_classes=3, classes=CLASSES, width=8), trainer.train_cfg, trainer.data
    )
    with pytest.raises(CheckpointError, match="width"):
        other.load_checkpoint(files)
