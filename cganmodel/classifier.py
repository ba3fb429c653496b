"""The scoring classifier: its config, loading, and inference (label accuracy, probabilities, features).

The network is in :mod:`cganmodel.nets.classifier`, its training in :mod:`cganmodel.train_classifier`
(the same split as the GAN side: :mod:`cganmodel.gan`, :mod:`cganmodel.nets`, :mod:`cganmodel.train`).
Inputs inside the library are float NCHW in [-1, 1]; at the boundary images are uint8 NHWC.
Weights are safetensors + JSON only (nothing is ever unpickled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cganmodel.checkpoint import CheckpointError, bytes_to_tensors, load_state_dict
from cganmodel.devices import module_device
from cganmodel.imaging import nhwc_to_input
from cganmodel.nets.classifier import Classifier, build_classifier
from cganmodel.presets import PRESETS, config_from_dict

FORMAT_VERSION = 1
MODEL_FILE = "classifier.safetensors"

__all__ = ["Classifier", "ClassifierConfig", "build_classifier", "evaluate_accuracy", "load_classifier", "predict_proba"]


@dataclass
class ClassifierConfig:
    num_classes: int
    classes: list[str] = field(default_factory=list)
    width: int = PRESETS["classifier"].architecture["width"]

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for num_classes={self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        return config_from_dict(cls, data)



def load_classifier(weights: bytes | Path, meta: Mapping[str, Any]) -> Classifier:
    """Rebuild the classifier described by ``meta`` (from ``export()``), in eval mode on the CPU."""
    if meta.get("kind") != "classifier":
        raise CheckpointError(f"metadata kind is {meta.get('kind')!r}, expected 'classifier'")
    try:
        cfg = ClassifierConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"bad classifier config in metadata: {exc}") from exc
    data = Path(weights).read_bytes() if isinstance(weights, Path) else weights
    from cganmodel.safe_build import build_checked

    tensors = bytes_to_tensors(MODEL_FILE, data)
    model = build_checked(MODEL_FILE, lambda: build_classifier(cfg.num_classes, cfg.width), tensors)  # shapes first
    load_state_dict(MODEL_FILE, model, tensors)
    return model.to(memory_format=torch.channels_last).eval()


@torch.inference_mode()
def predict_proba(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Softmax probabilities (N, C) float32 for uint8 NHWC images; runs on the model's device."""
    device = module_device(model) or "cpu"
    out = [
        F.softmax(model(nhwc_to_input(images[i : i + batch_size], device)).float(), dim=1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    if not out:
        raise ValueError("no images to classify")
    return torch.cat(out).numpy()


def evaluate_accuracy(model: nn.Module, data: Any, batch_size: int = 500) -> dict[str, Any]:
    """Top-1 accuracy of ``model`` on an ImageData: ``{"accuracy", "count", "per_class": {name: acc}}``."""
    was_training = model.training
    model.eval()
    try:
        pred = predict_proba(model, data.images, batch_size).argmax(axis=1)
    finally:
        model.train(was_training)
    labels = np.asarray(data.labels)
    correct = pred == labels
    per_class = {
        name: float(correct[labels == i].mean()) for i, name in enumerate(data.classes) if (labels == i).any()
    }
    return {"accuracy": float(correct.mean()), "count": int(len(labels)), "per_class": per_class}
