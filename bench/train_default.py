"""Train a GAN preset for a bounded wall time and export its EMA generator (the shipped default).

    python bench/train_default.py --data ../shared/data/cifar10-jpeg.tar.gz --preset resnet --minutes 60 \
        --out cganmodel/weights/default-generator --snapshot-minutes 10 --runs runs/resnet

Every ``--snapshot-minutes`` the EMA generator is exported to ``<runs>/ema-<minutes>min.safetensors``
(+ .json), so `bench/fid_vs_minutes.py` can draw how FID falls with training time. The final export
goes to ``<out>.safetensors`` / ``<out>.json`` with the training facts (preset, steps, hardware, wall
time) in the JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cganmodel.data import load_image_dataset
from cganmodel.gan import GANConfig
from cganmodel.train import TrainConfig, Trainer


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def export(trainer: Trainer, stem: Path, facts: dict) -> None:
    weights, meta = trainer.export_generator()
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".safetensors").write_bytes(weights)
    stem.with_suffix(".json").write_text(json.dumps(dict(meta, **facts), indent=2, sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="resnet", choices=["resnet", "mlp"])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="stem of the exported generator")
    parser.add_argument("--runs", type=Path, default=None, help="folder for timed EMA snapshots and the log")
    parser.add_argument("--snapshot-minutes", type=float, default=10.0)
    parser.add_argument("--threads-file", type=Path, default=None, help="a file holding a thread count, re-read as it changes (share the CPU with other runs without oversubscribing it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = load_image_dataset(args.data, split="train")
    print(f"loaded {len(data)} images, classes {data.classes} in {time.perf_counter() - t0:.1f} s", flush=True)
    gan_cfg = GANConfig(preset=args.preset, num_classes=len(data.classes), classes=list(data.classes))
    train_cfg = TrainConfig(preset=args.preset, steps=10**8, batch_size=args.batch_size, checkpoint_every=0, seed=args.seed)
    trainer = Trainer(gan_cfg, train_cfg, data)

    budget = args.minutes * 60
    start = time.perf_counter()
    next_snapshot = args.snapshot_minutes * 60
    if args.runs:
        args.runs.mkdir(parents=True, exist_ok=True)
    log = (args.runs / "train.log").open("a") if args.runs else None
    facts = lambda elapsed: {  # noqa: E731
        "preset": args.preset,
        "dataset": "CIFAR-10 (JPEG copy)",
        "steps": trainer.step,
        "batch_size": args.batch_size,
        "wall_s": round(elapsed, 1),
        "cpu_s": round(time.process_time(), 1),
        "hardware": hardware(),
        "torch": torch.__version__,
    }

    def should_stop() -> bool:
        nonlocal next_snapshot
        if args.threads_file and args.threads_file.exists():
            wanted = int(args.threads_file.read_text().strip() or 0)
            if wanted and wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)
                print(f"now {wanted} threads", flush=True)
        elapsed = time.perf_counter() - start
        if args.runs and elapsed >= next_snapshot:
            export(trainer, args.runs / f"ema-{int(round(next_snapshot / 60)):03d}min", facts(elapsed))
            next_snapshot += args.snapshot_minutes * 60
        return elapsed >= budget

    def on_progress(info: dict) -> None:
        if info["step"] % 100 == 0:
            line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in info.items() if k != "steps"} | {"elapsed_s": round(time.perf_counter() - start, 1)})
            print(line, flush=True)
            if log:
                log.write(line + "\n")
                log.flush()

    trainer.run(on_progress=on_progress, should_stop=should_stop)
    elapsed = time.perf_counter() - start
    export(trainer, args.out, facts(elapsed))
    if args.runs:
        export(trainer, args.runs / f"ema-{int(round(elapsed / 60)):03d}min-final", facts(elapsed))
    print(f"done: {trainer.step} steps in {elapsed / 60:.1f} min -> {args.out}.safetensors", flush=True)


if __name__ == "__main__":
    main()
