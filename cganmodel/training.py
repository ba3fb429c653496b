"""What every trainer of this library shares: its result and its interface.

The GAN's :class:`cganmodel.train.Trainer` and the classifier's
:class:`cganmodel.train_classifier.ClassifierTrainer` both satisfy :class:`ModelTrainer`, so a caller
(the worker's train job, the recipes) drives either the same way: load a checkpoint, run with
progress / checkpoint / stop callbacks, export the model.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

ProgressCallback = Callable[[dict[str, Any]], None]
CheckpointCallback = Callable[[int, dict[str, bytes]], None]
StopCallback = Callable[[], bool]


class TrainingDiverged(ValueError):
    """A logged loss is no longer a finite number: the weights are NaN or infinite from here on, so the run
    stops (its job fails) rather than exporting a model that draws blank images."""


def check_finite(step: int, losses: Mapping[str, float], lowering: str) -> None:
    """Raise :class:`TrainingDiverged` when any of ``losses`` (the means of one log interval) is NaN or
    infinite; ``lowering`` names the recipe keys to lower (``--set lr_g=...``)."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise TrainingDiverged(f"training diverged at step {step} ({shown}): lower {lowering} (--set KEY=VALUE) and train again")


@dataclass
class TrainResult:
    step: int  # optimiser steps done (generator updates for a GAN)
    steps: int  # the configured total
    stopped: bool  # should_stop() ended the run early
    elapsed_s: float
    last: dict[str, float] = field(default_factory=dict)  # the last logged means (losses, accuracy)


class ModelTrainer(Protocol):
    step: int

    def load_checkpoint(self, files: Mapping[str, bytes]) -> None: ...

    def run(
        self,
        on_progress: ProgressCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> TrainResult: ...

    def export(self) -> tuple[bytes, dict[str, Any]]:
        """The trained model as safetensors bytes plus its JSON metadata (with ``kind``)."""
        ...

