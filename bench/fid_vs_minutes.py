"""Score timed EMA snapshots of a training run (and a baseline) with the evaluate job's own code.

    python -m bench.fid_vs_minutes --snapshots 'runs/resnet/ema-*.json' 'runs/mlp/ema-*.json' \
        --classifier cganmodel/weights/default-classifier --reference ../shared/data/cifar10-jpeg.tar.gz \
        --samples-per-class 500 --inception-samples-per-class 0 --out runs/fid_vs_minutes.json

For every snapshot: label accuracy (the project's classifier), FID in that classifier's feature space
and, with ``--inception-samples-per-class N > 0``, Inception FID on N samples a class against
``--inception-reference-limit`` training images (a small-N FID: biased upwards against the standard
50k protocol; say so next to any figure).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import time
from pathlib import Path

import torch

from cganmodel.classifier import load_classifier
from cganmodel.data import load_image_dataset
from cganmodel.dataset_index import fingerprint
from cganmodel.evaluation import evaluate_generator, reference_stats
from cganmodel.fid import stats_from_bytes, stats_to_bytes
from cganmodel.pretrained import load_generator


def _cache_file(folder: Path, classifier_stem: Path, reference: str) -> Path:
    """The cache file of one classifier's statistics of one reference: keyed by the classifier's weights and
    the reference's absolute path and content fingerprint (a changed file or folder gets a new entry)."""
    key = {
        "classifier_sha256": hashlib.sha256(classifier_stem.with_suffix(".safetensors").read_bytes()).hexdigest(),
        "reference": str(Path(reference).expanduser().absolute()),
        "content": fingerprint(reference),
    }
    return folder / f"classifier-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]}.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshots", nargs="+", required=True, help="globs of exported generator .json files")
    parser.add_argument("--classifier", required=True, help="stem of the classifier .safetensors/.json")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--samples-per-class", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the trials table uses 0; another seed confirms a close call)")
    parser.add_argument("--truncation", type=float, default=None, help="sample at this noise truncation, as `submit generate --truncation` (default: none)")
    parser.add_argument("--inception-samples-per-class", type=int, default=0)
    parser.add_argument("--inception-reference-limit", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--reference-cache", default=None,
                        help="folder of classifier reference statistics, one file per (classifier weights, reference path and content): "
                             "read if present, else computed and written")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    stem = Path(args.classifier)
    classifier = load_classifier(stem.with_suffix(".safetensors"), json.loads(stem.with_suffix(".json").read_text()))
    data = load_image_dataset(args.reference, split="train")
    cache = _cache_file(Path(args.reference_cache), stem, args.reference) if args.reference_cache else None
    if cache is not None and cache.is_file():
        reference = stats_from_bytes(cache.read_bytes())
    else:
        reference = reference_stats(data, classifier=classifier)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(stats_to_bytes(reference))
    inception_ref = None
    if args.inception_samples_per_class:
        inception_ref = reference_stats(data, inception=True, max_images=args.inception_reference_limit)

    rows = []
    for path in sorted(p for pattern in args.snapshots for p in glob.glob(pattern)):
        meta = json.loads(Path(path).read_text())
        G = load_generator(Path(path).with_suffix(".safetensors"), meta)
        start = time.perf_counter()
        metrics, _ = evaluate_generator(G, data.classes, classifier=classifier, samples_per_class=args.samples_per_class, seed=args.seed, truncation=args.truncation, reference=reference)
        row = {
            "snapshot": path,
            "preset": meta["config"]["preset"],
            "train_minutes": round(meta.get("wall_s", 0) / 60, 1),
            "steps": meta.get("steps"),
            "label_accuracy": round(metrics["label_accuracy"], 4),
            "classifier_fid": round(metrics["classifier_fid"], 3),
        }
        if inception_ref is not None:
            inc, _ = evaluate_generator(G, data.classes, classifier=None, samples_per_class=args.inception_samples_per_class, seed=args.seed,
                                        truncation=args.truncation, reference=inception_ref, inception=True)
            row["inception_fid_small_n"] = round(inc["inception_fid"], 2)
        row["eval_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    protocol = {
        "reference": f"{args.reference} (train split, {len(data)} images)",
        "samples_per_class": args.samples_per_class,
        "seed": args.seed,
        "truncation": args.truncation,
        "inception": {"samples_per_class": args.inception_samples_per_class, "reference_images": args.inception_reference_limit}
        if args.inception_samples_per_class
        else None,
    }
    print(f"\n{'preset':8} {'minutes':>7} {'steps':>6} {'label acc':>9} {'clf FID':>8} {'Inc FID*':>9}")
    for r in rows:
        print(f"{r['preset']:8} {r['train_minutes']:7.1f} {r['steps']:6} {r['label_accuracy']:9.3f} {r['classifier_fid']:8.2f} {r.get('inception_fid_small_n', float('nan')):9.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
