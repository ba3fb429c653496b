"""Inception (FID network) forward speed on this machine: contiguous (NCHW) vs channels_last input and weights.

    python -m bench.inception_speed --threads 1 --batch 50 --rounds 5

The two layouts alternate round by round on the same batch (random uint8 32x32 images, resized to 299
as the evaluate job does; the resize is outside the timing), so a neighbour's load hits both alike; prints
images/s per round, the medians and their ratio, and the largest feature difference between the layouts.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch

from cganmodel.devices import describe_device
from cganmodel.fid import INCEPTION_INPUT_RANGE, INCEPTION_SIZE, InceptionFeatures, nv_bilinear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    lo, hi = INCEPTION_INPUT_RANGE
    x = (nv_bilinear(torch.from_numpy(images).permute(0, 3, 1, 2).float(), INCEPTION_SIZE) / 255.0).clamp(0, 1) * (hi - lo) + lo
    channels_last = InceptionFeatures().model  # the layout the product uses
    contiguous = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
    layouts = {"contiguous": (contiguous, x.contiguous()), "channels_last": (channels_last, x.contiguous(memory_format=torch.channels_last))}
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    outputs = {}
    with torch.inference_mode():
        for model, inp in layouts.values():
            model(inp[:2])  # warm-up
        for r in range(args.rounds):
            for name, (model, inp) in layouts.items():
                start = time.perf_counter()
                outputs[name] = model(inp)
                rates[name].append(args.batch / (time.perf_counter() - start))
            print(f"round {r + 1}: " + "  ".join(f"{n} {rates[n][-1]:.2f} images/s" for n in layouts), flush=True)
    medians = {n: statistics.median(v) for n, v in rates.items()}
    result = {
        "device": describe_device(),
        "threads": args.threads,
        "batch": args.batch,
        "rounds": args.rounds,
        "median_images_per_s": {n: round(v, 3) for n, v in medians.items()},
        "channels_last_speedup": round(medians["channels_last"] / medians["contiguous"], 3),
        "max_feature_difference": float((outputs["channels_last"] - outputs["contiguous"]).abs().max()),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
