"""Training throughput of both GAN presets on this machine: steps/s and real images/s through D.

    python -m bench.train_speed --data ../shared/data/cifar10-jpeg.tar.gz --steps 40 --threads 2 --out runs/train_speed.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from cganmodel.data import load_image_dataset
from cganmodel.devices import describe_device
from cganmodel.gan import GANConfig
from cganmodel.train import TrainConfig, Trainer


def measure(preset: str, data, steps: int, batch_size: int, warmup: int) -> dict:
    gan_cfg = GANConfig(preset=preset, num_classes=len(data.classes), classes=list(data.classes))
    trainer = Trainer(gan_cfg, TrainConfig(preset=preset, steps=warmup, batch_size=batch_size, checkpoint_every=0), data)
    trainer.run()  # warm-up: allocator, first-call overheads
    trainer.train_cfg.steps = warmup + steps
    start = time.perf_counter()
    trainer.run()
    elapsed = time.perf_counter() - start
    n_dis = trainer.train_cfg.n_dis or 1
    return {
        "preset": preset,
        "steps": steps,
        "batch_size": batch_size,
        "n_dis": n_dis,
        "s_per_step": round(elapsed / steps, 4),
        "g_steps_per_s": round(steps / elapsed, 3),
        "real_images_per_s": round(steps * batch_size * n_dis / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_image_dataset(args.data, split="train")
    rows = [measure(p, data, args.steps, args.batch_size, args.warmup) for p in ("mlp", "resnet")]
    report = {"hardware": describe_device(), "torch": torch.__version__, "results": rows}
    print(f"{'preset':8} {'s/step':>8} {'G steps/s':>10} {'real img/s':>11}  ({report['hardware']})")
    for r in rows:
        print(f"{r['preset']:8} {r['s_per_step']:8.3f} {r['g_steps_per_s']:10.2f} {r['real_images_per_s']:11.0f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
