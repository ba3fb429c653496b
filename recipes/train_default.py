"""Train the shipped default generator: a GAN preset, bounded in wall time, resumable across sessions.

    python recipes/train_default.py --data ../shared/data/cifar10-jpeg.tar.gz --preset resnet --minutes 150 \
        --checkpoint recipes/checkpoints/default-generator --out cganmodel/weights/default-generator \
        --runs runs/default --snapshot-minutes 10 --threads 1

The full training state (G, D, EMA, both Adam states, RNG states, data position, loss history) is
written to ``--checkpoint`` every ``--checkpoint-minutes`` and at the end (files replaced atomically,
one copy). When ``--checkpoint`` already holds a state, training continues from it: the continued run
is bit-identical to an uninterrupted one on the same CPU setup (``cganmodel.train``'s guarantee). A
missing checkpoint starts fresh with a message; a corrupt one fails with the file named.

``--export-only`` trains nothing: it exports the checkpoint's EMA generator to ``--out`` with the current
export code (e.g. after the export gained BatchNorm standing statistics) and the checkpoint's facts.

Every ``--snapshot-minutes`` the EMA generator is exported to ``<runs>/ema-<cpu-seconds>cpus.safetensors``
(+ .json) so `python -m bench.fid_vs_minutes` can score the run against CPU time. The final export goes to
``<out>.safetensors`` / ``<out>.json`` with the training facts (preset, steps, hardware, CPU seconds
summed over every session of the run) and the recipe that made it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from cganmodel.checkpoint import CheckpointError
from cganmodel.data import load_image_dataset
from cganmodel.devices import describe_device
from cganmodel.gan import GANConfig
from cganmodel.presets import resolve_recipe
from cganmodel.train import TrainConfig, Trainer

RECIPE = "recipes/train_default.py"


def read_checkpoint(folder: Path) -> dict[str, bytes] | None:
    if not (folder / "state.json").exists():
        return None
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def write_checkpoint(folder: Path, files: dict[str, bytes], facts: dict) -> None:
    """Replace ``folder`` with ``files`` (+ run.json) atomically: a crash leaves the old or the new copy."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    (tmp / "run.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def export(trainer: Trainer, stem: Path, facts: dict) -> None:
    weights, meta = trainer.export()
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".safetensors").write_bytes(weights)
    stem.with_suffix(".json").write_text(json.dumps(dict(meta, **facts), indent=2, sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="resnet", choices=["resnet", "mlp"])
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of this session")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None, help="folder of the full training state (resumed from, replaced)")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--out", type=Path, required=True, help="stem of the exported generator")
    parser.add_argument("--runs", type=Path, default=None, help="folder for timed EMA snapshots and the log")
    parser.add_argument("--snapshot-minutes", type=float, default=10.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the preset's recipe, as `cganctl submit train --set` (a trial; the shipped run uses none)")
    parser.add_argument("--export-only", action="store_true",
                        help="train nothing: export --checkpoint's EMA generator to --out with the current export code")
    args = parser.parse_args()
    if args.export_only and not args.checkpoint:
        sys.exit("error: --export-only needs --checkpoint")
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = load_image_dataset(args.data, split="train")
    print(f"loaded {len(data)} images, classes {data.classes} in {time.perf_counter() - t0:.1f} s", flush=True)
    gan_cfg = GANConfig(preset=args.preset, num_classes=len(data.classes), classes=list(data.classes))
    overrides = dict(item.split("=", 1) for item in args.overrides)
    try:
        # No step limit unless one is set (e.g. with lr_decay_start): the run is bounded by --minutes.
        recipe = resolve_recipe(args.preset, {"steps": 10**8, **overrides, "batch_size": args.batch_size, "checkpoint_every": 0, "seed": args.seed})
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    train_cfg = TrainConfig(**recipe)
    trainer = Trainer(gan_cfg, train_cfg, data)

    prior = {"wall_s": 0.0, "cpu_s": 0.0, "sessions": []}
    if args.checkpoint:
        files = read_checkpoint(args.checkpoint)
        if files is None:
            print(f"no checkpoint in {args.checkpoint}: starting fresh", flush=True)
        else:
            try:
                trainer.load_checkpoint(files)
            except CheckpointError as exc:
                sys.exit(f"error: {args.checkpoint}: {exc}")
            if "run.json" in files:
                prior = json.loads(files["run.json"])
            print(f"resumed from {args.checkpoint} at step {trainer.step}", flush=True)
    if args.export_only:
        if files is None:
            sys.exit(f"error: --export-only: no checkpoint in {args.checkpoint}")
        export(trainer, args.out, prior)
        print(f"exported step {trainer.step} -> {args.out}.safetensors", flush=True)
        return

    budget = args.minutes * 60
    start = time.perf_counter()
    cpu0 = time.process_time()
    next_snapshot = args.snapshot_minutes * 60
    next_checkpoint = args.checkpoint_minutes * 60
    if args.runs:
        args.runs.mkdir(parents=True, exist_ok=True)
    log = (args.runs / "train.log").open("a") if args.runs else None
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": torch.get_num_threads(),
               "from_step": trainer.step, "overrides": overrides}

    def facts() -> dict:
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        return {
            "recipe": RECIPE,
            "preset": args.preset,
            "overrides": overrides,
            "dataset": "CIFAR-10 (JPEG copy)",
            "steps": trainer.step,
            "batch_size": args.batch_size,
            "wall_s": round(prior["wall_s"] + elapsed, 1),
            "cpu_s": round(prior["cpu_s"] + cpu, 1),
            "sessions": prior["sessions"] + [dict(session, to_step=trainer.step, wall_s=round(elapsed, 1), cpu_s=round(cpu, 1))],
            "hardware": describe_device(),
            "torch": torch.__version__,
        }

    def save_checkpoint() -> None:
        if args.checkpoint:
            trainer._capture_global_rng()
            write_checkpoint(args.checkpoint, trainer.checkpoint_files(), facts())

    def should_stop() -> bool:
        nonlocal next_snapshot, next_checkpoint
        elapsed = time.perf_counter() - start
        if args.runs and elapsed >= next_snapshot:
            f = facts()
            export(trainer, args.runs / f"ema-{int(f['cpu_s']):06d}cpus", f)
            next_snapshot += args.snapshot_minutes * 60
        if elapsed >= next_checkpoint:
            save_checkpoint()
            next_checkpoint += args.checkpoint_minutes * 60
        return elapsed >= budget or os.path.exists(str(args.runs or ".") + "/STOP")

    def on_progress(info: dict) -> None:
        if info["step"] % 100 == 0:
            line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in info.items() if k != "steps"} | {"elapsed_s": round(time.perf_counter() - start, 1)})
            print(line, flush=True)
            if log:
                log.write(line + "\n")
                log.flush()

    trainer.run(on_progress=on_progress, should_stop=should_stop)
    save_checkpoint()
    f = facts()
    export(trainer, args.out, f)
    if args.runs:
        export(trainer, args.runs / f"ema-{int(f['cpu_s']):06d}cpus-final", f)
    print(f"done: {trainer.step} steps, {f['cpu_s']:.0f} CPU-s in all -> {args.out}.safetensors", flush=True)


if __name__ == "__main__":
    main()
