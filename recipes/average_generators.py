"""Average the weights of several exported snapshots of one training run into one generator.

    python recipes/average_generators.py runs/B5/ema-0*.json --out runs/B5/avg

The EMA of a run averages its generator over about 1 / (1 - ema_decay) steps (1,000 for the `resnet`
recipe). Averaging EMA snapshots taken along the same run (e.g. every 15 minutes by
`recipes/train_default.py --snapshot-minutes`) widens that window after the fact, without retraining:
the parameters are averaged element-wise (``cganmodel.sampling.average_parameters``) and the BatchNorm
statistics are recomputed for the averaged weights (``standing_statistics``, as every export does), seeded
from the run's seed and the last snapshot's step. The snapshots must share one architecture and class list.
The output's JSON is the last snapshot's facts plus ``averaged_from`` (each snapshot's file, step and
CPU-seconds), so a shipped average names what made it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cganmodel.checkpoint import CheckpointError
from cganmodel.gan import GANConfig
from cganmodel.pretrained import load_generator, save_generator
from cganmodel.sampling import average_parameters, standing_statistics
from cganmodel.seeding import TRAIN_STREAMS, mix_seed

RECIPE = "recipes/average_generators.py"


def load(path: Path) -> tuple[torch.nn.Module, dict]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        return load_generator(path.with_suffix(".safetensors"), meta), meta
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def average(paths: list[Path], standing_batches: int | None = None) -> tuple[bytes, dict]:
    """The averaged generator of the snapshots ``paths`` (ordered by step) as safetensors bytes + meta."""
    loaded = sorted(((p, *load(p)) for p in paths), key=lambda item: item[2].get("step", 0))
    last = loaded[-1][2]
    for path, _, meta in loaded:
        if meta["config"] != last["config"]:
            raise ValueError(f"{path}: its generator config differs from the others': not one run")
    cfg = GANConfig.from_dict(last["config"])
    recipe = last.get("train_config", {})
    batches = standing_batches if standing_batches is not None else int(recipe.get("standing_stats") or 100)
    G = average_parameters([g.to(memory_format=torch.contiguous_format) for _, g, _ in loaded])
    seed = mix_seed(int(recipe.get("seed", 0)), TRAIN_STREAMS["standing_stats"], int(last.get("step", 0)))
    G = standing_statistics(G, len(cfg.classes), batches=batches, batch_size=int(recipe.get("batch_size", 64)), seed=seed)
    weights, meta = save_generator(G, cfg)
    averaged_from = {
        "recipe": RECIPE,
        "standing_stats": batches,
        "snapshots": [{"file": p.name, "step": m.get("step"), "cpu_s": m.get("cpu_s")} for p, _, m in loaded],
    }
    return weights, {**last, **meta, "averaged_from": averaged_from}  # the last snapshot's facts; save_generator's keys win


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("snapshots", nargs="+", type=Path, help="exported generator .json files of one run")
    parser.add_argument("--out", type=Path, required=True, help="stem of the averaged generator (.safetensors/.json)")
    parser.add_argument("--standing-batches", type=int, default=None, help="BatchNorm standing-statistics batches (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        weights, meta = average(args.snapshots, args.standing_batches)
    except (CheckpointError, ValueError, KeyError) as exc:
        sys.exit(f"error: {exc}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".safetensors").write_bytes(weights)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    steps = [s["step"] for s in meta["averaged_from"]["snapshots"]]
    print(f"averaged {len(steps)} snapshots (steps {steps}) -> {args.out}.safetensors", flush=True)


if __name__ == "__main__":
    main()
