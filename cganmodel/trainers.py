"""The trainer of a preset: :class:`cganmodel.train.Trainer` for a GAN preset, the classifier's otherwise.

Both satisfy :class:`cganmodel.training.ModelTrainer`, so the caller (the worker's train job) drives
either the same way.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cganmodel.classifier import ClassifierConfig
from cganmodel.gan import GANConfig
from cganmodel.presets import ClassifierTrainConfig, TrainConfig, preset
from cganmodel.train import Trainer
from cganmodel.train_classifier import ClassifierTrainer
from cganmodel.training import ModelTrainer


def make_trainer(name: str, data: Any, recipe: Mapping[str, Any]) -> ModelTrainer:
    """The trainer of preset ``name`` on ``data`` (its classes taken from the data) with a resolved ``recipe``
    (``cganmodel.presets.resolve_recipe``)."""
    classes = list(data.classes)
    if preset(name).kind == "classifier":
        config = ClassifierConfig(num_classes=len(classes), classes=classes)
        return ClassifierTrainer(config, ClassifierTrainConfig.from_dict(recipe), data)
    return Trainer(GANConfig(preset=name, num_classes=len(classes), classes=classes), TrainConfig.from_dict(recipe), data)
