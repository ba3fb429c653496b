"""Train the default CIFAR classifier (used for label accuracy, classifier-FID and filtering).

    python recipes/train_classifier.py --data ../shared/data/cifar10-jpeg.tar.gz --minutes 18
    python recipes/train_classifier.py --data cifar10 --steps 4000 --out cganmodel/weights/default-classifier

Writes ``<out>.safetensors`` (weights) and ``<out>.json`` (``load_classifier`` metadata plus the run:
steps, wall time, hardware, data, test accuracy overall and per class). With ``--minutes`` the step
count is fixed up front from a short timing run, so the one-cycle schedule still completes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from cganmodel.classifier import ClassifierConfig, evaluate_accuracy
from cganmodel.data import ImageData, load_image_dataset
from cganmodel.train_classifier import ClassifierTrainConfig, ClassifierTrainer

RECIPE = "recipes/train_classifier.py"

CALIBRATION_STEPS = 15


def hardware(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def data_description(source: str) -> dict[str, str]:
    path = Path(source)
    if not path.is_file():
        return {"source": source}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"source": path.name, "sha256": digest}


def steps_for_minutes(minutes: float, cfg: ClassifierConfig, train_cfg: ClassifierTrainConfig, data: ImageData) -> int:
    """Steps that fit in ``minutes``, from timing a few steps of a scratch run (after one warm-up step)."""
    probe = ClassifierTrainer(cfg, replace(train_cfg, steps=CALIBRATION_STEPS + 1, progress_every=1), data)
    ticks: list[float] = []
    probe.run(on_progress=lambda _: ticks.append(time.perf_counter()))
    rate = (len(ticks) - 1) / (ticks[-1] - ticks[0])
    return max(1, int(minutes * 60 * rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cifar10, an ImageFolder dir, or a tar with train/ and test/")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int)
    budget.add_argument("--minutes", type=float, help="wall-clock budget for training (evaluation excluded)")
    parser.add_argument("--out", default="cganmodel/weights/default-classifier")
    parser.add_argument("--width", type=int, default=ClassifierConfig.width)
    parser.add_argument("--batch-size", type=int, default=ClassifierTrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=ClassifierTrainConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train = load_image_dataset(args.data, split="train")
    test = load_image_dataset(args.data, split="test")
    if test.classes != train.classes:
        raise SystemExit(f"train and test classes differ: {train.classes} vs {test.classes}")
    print(f"loaded {len(train)} train / {len(test)} test images in {time.perf_counter() - t0:.1f}s", flush=True)

    cfg = ClassifierConfig(num_classes=len(train.classes), classes=train.classes, width=args.width)
    train_cfg = ClassifierTrainConfig(
        steps=args.steps or 1, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device
    )
    if args.minutes is not None:
        train_cfg = replace(train_cfg, steps=steps_for_minutes(args.minutes, cfg, train_cfg, train))
    epochs = train_cfg.steps * train_cfg.batch_size / len(train)
    print(f"training {train_cfg.steps} steps (~{epochs:.1f} epochs) at batch {train_cfg.batch_size}", flush=True)

    trainer = ClassifierTrainer(cfg, train_cfg, train)

    def progress(p: dict[str, float]) -> None:
        print(
            f"step {p['step']}/{p['steps']} loss {p['loss']:.3f} train acc {p['accuracy']:.3f} "
            f"{p['images_per_s']:.0f} img/s",
            flush=True,
        )

    result = trainer.run(on_progress=progress)
    t1 = time.perf_counter()
    accuracy = evaluate_accuracy(trainer.model, test)
    eval_s = time.perf_counter() - t1
    print(f"test accuracy {accuracy['accuracy']:.4f} ({accuracy['count']} images, {eval_s:.1f}s)", flush=True)

    weights, meta = trainer.export()
    meta.update(
        recipe=RECIPE,
        wall_time_s=round(result.elapsed_s, 1),
        epochs=round(epochs, 2),
        hardware=hardware(trainer.device),
        data=data_description(args.data),
        test_accuracy=accuracy,
        test_images_per_s=round(accuracy["count"] / eval_s, 1),
    )
    weights_path, meta_path = Path(f"{args.out}.safetensors"), Path(f"{args.out}.json")
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    weights_path.write_bytes(weights)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {weights_path} and {meta_path}")


if __name__ == "__main__":
    main()
