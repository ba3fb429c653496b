"""Training the scoring classifier: SGD-Nesterov with a one-cycle learning rate, resumable by step.

Same interface as the GAN's :class:`cganmodel.train.Trainer` (``load_checkpoint``, ``run``, ``export``,
a :class:`cganmodel.training.TrainResult`), so a train job drives either without branching.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from cganmodel.checkpoint import (
    CheckpointError,
    bytes_to_tensors,
    check_config,
    check_state_dict,
    load_optimizers,
    optimizers_to_bytes,
    read_json,
    tensors_to_bytes,
)
from cganmodel.classifier import FORMAT_VERSION, MODEL_FILE, ClassifierConfig
from cganmodel.devices import resolve_device
from cganmodel.imaging import nhwc_to_input
from cganmodel.nets.classifier import build_classifier
from cganmodel.presets import ClassifierTrainConfig
from cganmodel.seeding import stream_seed
from cganmodel.training import TrainResult, check_finite

OPTIM_FILE = "optim.safetensors"
STATE_FILE = "state.json"


def _generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, *keys))



def _augment(images: torch.Tensor, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """uint8 NHWC batch -> float NCHW in [-1, 1], random 4-pixel reflect-pad crop and horizontal flip."""
    x = nhwc_to_input(images, device)
    n, _, h, w = x.shape
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(device)
    flip = (torch.rand(n, generator=gen) < 0.5).to(device)
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = dx[:, None] + torch.arange(w, device=device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return crops.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


class ClassifierTrainer:
    """Step-based, seeded, resumable training. Batch order and augmentation are pure functions of
    ``(seed, step)``, so a run resumed from a checkpoint retraces the uninterrupted one."""

    def __init__(self, cfg: ClassifierConfig, train_cfg: ClassifierTrainConfig, data: Any) -> None:
        if len(data.classes) != cfg.num_classes:
            raise ValueError(f"data has {len(data.classes)} classes, config says {cfg.num_classes}")
        if len(data.images) < 2:
            raise ValueError("need at least 2 training images")
        self.cfg = cfg
        self.train_cfg = train_cfg
        self.data = data
        self.device = resolve_device(train_cfg.device)
        self.images = torch.as_tensor(data.images)
        self.labels = torch.as_tensor(data.labels, dtype=torch.long)
        self.batch_size = min(train_cfg.batch_size, len(self.images))
        self.steps_per_epoch = len(self.images) // self.batch_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_cfg.seed)
            model = build_classifier(cfg.num_classes, cfg.width)
        self.model = model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": train_cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=train_cfg.lr,
            momentum=train_cfg.momentum,
            nesterov=True,
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._perm: tuple[int, torch.Tensor] | None = None

    # -- schedule and data

    def lr_at(self, step: int) -> float:
        total = self.train_cfg.steps
        warm = max(1, int(total * self.train_cfg.warmup_fraction))
        if step < warm:
            return self.train_cfg.lr * (step + 1) / warm
        return self.train_cfg.lr * max(0.0, (total - step) / max(1, total - warm))

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.images), generator=_generator(self.train_cfg.seed, 0, epoch)))
        idx = self._perm[1][pos * self.batch_size : (pos + 1) * self.batch_size]
        x = _augment(self.images[idx], _generator(self.train_cfg.seed, 1, step), self.device)
        return x, self.labels[idx].to(self.device)

    # -- checkpoints

    def checkpoint_files(self) -> dict[str, bytes]:
        state = {
            "format": FORMAT_VERSION,
            "kind": "classifier",
            "step": self.step,
            "config": self.cfg.to_dict(),
            "train_config": self.train_cfg.to_dict(),
            "history": self.history,
        }
        return {
            MODEL_FILE: tensors_to_bytes(self.model.state_dict()),
            OPTIM_FILE: optimizers_to_bytes({"sgd": self.optimizer}),
            STATE_FILE: json.dumps(state, indent=1).encode(),
        }

    def load_checkpoint(self, files: Mapping[str, bytes]) -> None:
        """Restore weights, optimizer state, step and history; raises CheckpointError, changing nothing."""
        missing = [n for n in (MODEL_FILE, OPTIM_FILE, STATE_FILE) if n not in files]
        if missing:
            raise CheckpointError(f"checkpoint is incomplete: missing {missing}")
        state = read_json(STATE_FILE, files[STATE_FILE])
        if not isinstance(state, dict) or state.get("kind") != "classifier" or state.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{STATE_FILE} is not a format-{FORMAT_VERSION} classifier checkpoint")
        if not isinstance(state.get("step"), int) or not isinstance(state.get("config"), dict):
            raise CheckpointError(f"checkpoint is corrupt: {STATE_FILE}: no step or config")
        check_config(STATE_FILE, state["config"], self.cfg.to_dict())
        weights = bytes_to_tensors(MODEL_FILE, files[MODEL_FILE])
        check_state_dict(MODEL_FILE, self.model, weights)
        load_optimizers(OPTIM_FILE, files[OPTIM_FILE], {"sgd": self.optimizer})
        self.model.load_state_dict(weights)
        self.step = state["step"]
        self.history = list(state.get("history", []))

    def export(self) -> tuple[bytes, dict[str, Any]]:
        meta = {
            "kind": "classifier",
            "format": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            "classes": list(self.cfg.classes),
            "steps": self.step,
            "train_config": self.train_cfg.to_dict(),
        }
        return tensors_to_bytes(self.model.state_dict()), meta

    # -- loop

    def run(
        self,
        on_progress: Callable[[dict[str, float]], None] | None = None,
        on_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        tc = self.train_cfg
        self.model.train()
        start = time.perf_counter()
        tick, seen, loss_sum, correct, count = start, 0, 0.0, 0, 0
        while self.step < tc.steps:
            if should_stop is not None and should_stop():
                return TrainResult(self.step, tc.steps, True, time.perf_counter() - start, self._last())
            x, y = self._batch(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
            if self.step % tc.progress_every == 0 or self.step == tc.steps:
                now = time.perf_counter()
                entry = {"step": self.step, "loss": loss_sum / count, "accuracy": correct / count}
                check_finite(self.step, {"loss": entry["loss"]}, "lr")
                self.history.append(entry)
                if on_progress is not None:
                    on_progress({**entry, "steps": tc.steps, "images_per_s": seen / max(now - tick, 1e-9)})
                tick, seen, loss_sum, correct, count = now, 0, 0.0, 0, 0
            if on_checkpoint is not None and (self.step % tc.checkpoint_every == 0 or self.step == tc.steps):
                if count:  # never save a diverged state between two progress lines
                    check_finite(self.step, {"loss": loss_sum / count}, "lr")
                on_checkpoint(self.step, self.checkpoint_files())
        self.model.eval()
        return TrainResult(self.step, tc.steps, False, time.perf_counter() - start, self._last())

    def _last(self) -> dict[str, float]:
        return {k: v for k, v in self.history[-1].items() if k != "step"} if self.history else {}
