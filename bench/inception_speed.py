"""Inception (FID network) forward speed on this machine, by memory layout and batch size.

    python -m bench.inception_speed --threads 2 --batches 4,50 --images 100 --rounds 3

Each round times every (layout, batch) pair over the same ``--images`` images (random uint8 32x32,
resized to 299 as the evaluate job does; the resize is outside the timing), so a neighbour's load hits
them alike. Layouts: contiguous (NCHW) and channels_last weights and input (what the product uses).
Prints images/s and the process's user / system CPU seconds per pair and round, the medians, and the
largest feature difference from the first pair's features. The product's batch per device is
``cganmodel.fid.INCEPTION_BATCH``.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time

import numpy as np
import torch

from cganmodel.devices import describe_device
from cganmodel.fid import INCEPTION_INPUT_RANGE, INCEPTION_SIZE, InceptionFeatures, nv_bilinear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="4,50", help="comma-separated batch sizes")
    parser.add_argument("--images", type=int, default=100, help="images per timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", default="channels_last,contiguous")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    lo, hi = INCEPTION_INPUT_RANGE
    x = (nv_bilinear(torch.from_numpy(images).permute(0, 3, 1, 2).float(), INCEPTION_SIZE) / 255.0).clamp(0, 1) * (hi - lo) + lo
    channels_last = InceptionFeatures().model  # the layout the product uses
    contiguous = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
    all_layouts = {"contiguous": (contiguous, x.contiguous()), "channels_last": (channels_last, x.contiguous(memory_format=torch.channels_last))}
    layouts = {name: all_layouts[name] for name in args.layouts.split(",")}
    pairs = [(name, b) for name in layouts for b in batches]
    rates: dict[tuple[str, int], list[float]] = {p: [] for p in pairs}
    reference = None
    max_diff = 0.0
    with torch.inference_mode():
        for model, inp in layouts.values():
            model(inp[:2])  # warm-up
        for r in range(args.rounds):
            for name, b in pairs:
                model, inp = layouts[name]
                before = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                out = torch.cat([model(inp[i : i + b]) for i in range(0, args.images, b)])
                seconds = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_SELF)
                rates[(name, b)].append(args.images / seconds)
                if reference is None:
                    reference = out
                max_diff = max(max_diff, float((out - reference).abs().max()))
                print(f"round {r + 1}: {name:13} batch {b:4}: {rates[(name, b)][-1]:6.2f} images/s, "
                      f"user {after.ru_utime - before.ru_utime:5.1f} s, system {after.ru_stime - before.ru_stime:5.1f} s", flush=True)
    medians = {f"{name} batch {b}": round(statistics.median(v), 3) for (name, b), v in rates.items()}
    result = {
        "device": describe_device(),
        "threads": args.threads,
        "images": args.images,
        "rounds": args.rounds,
        "median_images_per_s": medians,
        "max_feature_difference": max_diff,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
