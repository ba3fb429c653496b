"""Generate throughput: the product's end-to-end path against the generator's own speed and a naive script.

    python -m bench.generate_throughput --count 50000 --label frog --s3 --out runs/bench/generate-throughput.json

For ``--count`` images of one ``--label`` with the shipped default model
(``cganmodel/weights/default-generator.*``):

(a) floor: the generator's forward passes alone (batch 500, ``torch.inference_mode``, all noise drawn
    up front, no uint8 conversion, no encoding, no I/O), after one untimed warm-up batch;
(b) naive: the seed Keras tutorials' way, on ``--naive-count`` images: generate a batch of 100, convert
    each image to PIL and ``save()`` it as a PNG file, one file at a time; then upload the files one by
    one with boto3 ``put_object`` to a real S3 server (SeaweedFS, started before the clock). Its time
    for ``--count`` images is an extrapolation (linear in the image count) and is labelled so;
(c) product: ``cganctl submit generate --label L --count N --wait --json`` as a subprocess, timed from
    launch to its exit with the job ``succeeded``: on the embedded default (fresh ``CGAN_DATA_DIR``,
    SQLite, local folder store, the job runs in the CLI process) and, with ``--s3``, through real
    services (Redis db 7, a fresh PostgreSQL database, SeaweedFS) and one ``cganctl worker`` started
    and ready before the submit.

Goals: the product path >= 10x the naive path's images/s, and within 2x of the floor.
The in-process parts (a, b) use ``--device`` (auto: CUDA when available, as the worker does).
"""
from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from bench.benchutil import finish_facts, fmt, machine_facts, print_facts, print_table, write_json
from harness.services import base_env, keep_or_remove, real_services, start_s3, submit_and_wait, workers

GOAL_VS_NAIVE = 10.0
GOAL_VS_FLOOR = 2.0


def load_default_generator(device: str):
    import json as _json

    from cganmodel.pretrained import default_model_files, load_generator

    weights, meta_path = default_model_files("default-generator")
    if not weights.is_file() or not meta_path.is_file():
        raise SystemExit(f"error: the default model is missing: {weights} / {meta_path}")
    meta = _json.loads(meta_path.read_text())
    return load_generator(weights, meta).to(device), meta


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def measure_floor(G, label_index: int, count: int, batch: int, device: str, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(count, int(G.z_dim), generator=gen).to(device)
    y = torch.full((count,), label_index, dtype=torch.int64).to(device)
    with torch.inference_mode():
        G(z[:batch], y[:batch])  # warm-up (allocator, kernel selection): not timed
        sync(device)
        t0 = time.perf_counter()
        for start in range(0, count, batch):
            G(z[start : start + batch], y[start : start + batch])
        sync(device)
        seconds = time.perf_counter() - t0
    return {"images": count, "batch": batch, "seconds": round(seconds, 3), "images_per_s": round(count / seconds, 1)}


def measure_naive(G, label: str, label_index: int, count: int, batch: int, device: str, seed: int, tmp: Path) -> dict:
    """Generate -> one PNG file per image (PIL save) -> one put_object per file, against SeaweedFS."""
    import boto3
    import torch
    from PIL import Image

    from cganmodel.imaging import to_uint8
    from harness.s3server import client_config

    folder = tmp / "naive-images"
    folder.mkdir(parents=True)
    with start_s3(tmp / "naive-s3", bucket="naive") as server:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
            config=client_config(),
        )
        gen = torch.Generator().manual_seed(seed)
        t_generate = t_save = 0.0
        t0 = time.perf_counter()
        index = 0
        for start in range(0, count, batch):
            n = min(batch, count - start)
            t = time.perf_counter()
            noise = torch.randn(n, int(G.z_dim), generator=gen)
            labels = torch.full((n,), label_index, dtype=torch.int64)
            with torch.inference_mode():
                out = G(noise.to(device), labels.to(device))
            images = to_uint8(out).numpy()
            t_generate += time.perf_counter() - t
            t = time.perf_counter()
            for image in images:
                Image.fromarray(image).save(folder / f"{label}_{index:06d}.png")
                index += 1
            t_save += time.perf_counter() - t
        t = time.perf_counter()
        for path in sorted(folder.iterdir()):
            client.put_object(Bucket=server.bucket, Key=f"naive/{label}/{path.name}", Body=path.read_bytes(), ContentType="image/png")
        t_upload = time.perf_counter() - t
        seconds = time.perf_counter() - t0
        stored = client.list_objects_v2(Bucket=server.bucket, Prefix=f"naive/{label}/").get("KeyCount", 0)
    if stored != min(count, 1000):  # list_objects_v2 returns at most 1000 keys a page
        raise RuntimeError(f"naive path: expected {count} objects, the first listing page holds {stored}")
    return {
        "images": count,
        "batch": batch,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 1),
        "phases_s": {"generate": round(t_generate, 3), "save_png_files": round(t_save, 3), "upload_put_object": round(t_upload, 3)},
    }


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def submit_generate(env: dict[str, str], label: str, count: int, shard_size: int | None, timeout: float) -> dict:
    """Run ``cganctl submit generate ... --wait --json``; wall time from launch to exit."""
    args = ["submit", "generate", "--label", label, "--count", str(count), "--wait", "--json"]
    if shard_size:
        args += ["--shard-size", str(shard_size)]
    job, wall = submit_and_wait(env, *args, timeout=timeout)
    created, started, finished = (_parse_time(job.get(k)) for k in ("created_at", "started_at", "finished_at"))
    job_s = (finished - created).total_seconds() if created and finished else None
    run_s = (finished - started).total_seconds() if started and finished else None
    return {
        "images": count,
        "wall_s": round(wall, 3),
        "images_per_s": round(count / wall, 1),
        "job_id": job["id"],
        "job_created_to_finished_s": None if job_s is None else round(job_s, 3),
        "job_started_to_finished_s": None if run_s is None else round(run_s, 3),
        "shards": (job.get("metrics") or {}).get("shards"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50_000, help="images for the floor and the product paths (default 50000)")
    parser.add_argument("--label", default="frog", help="class to generate (default frog)")
    parser.add_argument("--naive-count", type=int, default=5000, help="images actually run through the naive path (default 5000)")
    parser.add_argument("--naive-batch", type=int, default=100)
    parser.add_argument("--floor-batch", type=int, default=500)
    parser.add_argument("--shard-size", type=int, default=None, help="passed to cganctl (default: CGAN_SHARD_SIZE, 2500)")
    parser.add_argument("--s3", action="store_true", help="also run the product path through Redis + PostgreSQL + SeaweedFS + 1 worker")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-default product run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads here and OMP_NUM_THREADS for cganctl processes (default: torch's own)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device of the floor and naive runs (auto: CUDA if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one cganctl run may take")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary work folder (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (images, logs, store)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.count < 1 or args.naive_count < 1:
        parser.error("--count and --naive-count must be positive")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from cganmodel.devices import resolve_device

    device = resolve_device(args.device).type
    product_device = resolve_device("auto").type  # what worker/models.py picks
    facts = machine_facts(cuda_used=device == "cuda" or product_device == "cuda")
    facts.update(bench_device=device, product_device=product_device, cganctl_omp_num_threads=args.threads)
    print_facts(facts)

    G, meta = load_default_generator(device)
    classes = list(meta["classes"])
    if args.label not in classes:
        raise SystemExit(f"error: unknown label {args.label!r}; the default model knows {', '.join(classes)}")
    label_index = classes.index(args.label)
    report: dict = {
        "bench": "generate_throughput",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"name": "default-generator", "preset": meta.get("config", {}).get("preset"), "steps": meta.get("steps")},
        "machine": facts,
        "goals": {"product_vs_naive_at_least": GOAL_VS_NAIVE, "floor_vs_product_at_most": GOAL_VS_FLOOR},
        "results": {},
    }
    results = report["results"]
    subprocess_env_extra = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}

    tmp = Path(tempfile.mkdtemp(prefix="cganctl-bench-gen-", dir=args.workdir))
    try:
        print(f"\n(a) floor: generator forward only, {args.count} images, batch {args.floor_batch}, {device} ...", flush=True)
        results["floor"] = measure_floor(G, label_index, args.count, args.floor_batch, device, args.seed)
        print(f"    {results['floor']['images_per_s']:,.1f} images/s", flush=True)

        print(f"(b) naive: {args.naive_count} images, batch {args.naive_batch} -> PNG files -> put_object one by one ...", flush=True)
        naive = measure_naive(G, args.label, label_index, args.naive_count, args.naive_batch, device, args.seed, tmp)
        naive["extrapolated_seconds_for_count"] = round(naive["seconds"] * args.count / args.naive_count, 1)
        naive["extrapolated"] = args.naive_count != args.count
        results["naive"] = naive
        print(f"    {naive['images_per_s']:,.1f} images/s", flush=True)
        del G

        if not args.no_embedded:
            print(f"(c1) product, embedded default: cganctl submit generate --label {args.label} --count {args.count} --wait --json ...", flush=True)
            env = dict(base_env(tmp / "embedded-data"), **subprocess_env_extra)
            results["embedded"] = submit_generate(env, args.label, args.count, args.shard_size, args.timeout)
            print(f"    {results['embedded']['images_per_s']:,.1f} images/s", flush=True)

        if args.s3:
            print("(c2) product, real services: starting SeaweedFS, PostgreSQL database, Redis db, 1 worker ...", flush=True)
            with real_services(tmp / "services") as env:
                env = dict(env, **subprocess_env_extra)
                with workers(env, 1, tmp / "logs", threads=args.threads):
                    print(f"     worker ready; submitting {args.count} images ...", flush=True)
                    results["s3"] = submit_generate(env, args.label, args.count, args.shard_size, args.timeout)
            print(f"    {results['s3']['images_per_s']:,.1f} images/s", flush=True)
    finally:
        finish_facts(facts)
        keep_or_remove(tmp, args.keep)

    floor_rate, naive_rate = results["floor"]["images_per_s"], results["naive"]["images_per_s"]
    for name in ("embedded", "s3"):
        if name in results:
            r = results[name]
            r["x_naive"] = round(r["images_per_s"] / naive_rate, 2)
            r["floor_over_this"] = round(floor_rate / r["images_per_s"], 2)
            r["meets_goal_vs_naive"] = r["x_naive"] >= GOAL_VS_NAIVE
            r["meets_goal_vs_floor"] = r["floor_over_this"] <= GOAL_VS_FLOOR
    results["floor"]["x_naive"] = round(floor_rate / naive_rate, 2)

    yes_no = lambda b: "yes" if b else "NO"  # noqa: E731
    rows = [
        ["(a) floor: G forward only", results["floor"]["images"], fmt(results["floor"]["seconds"], 2), fmt(floor_rate), f"{results['floor']['x_naive']:.1f}x", "1.00x", "", ""],
        ["(b) naive: PNG files + put_object", naive["images"], fmt(naive["seconds"], 2), fmt(naive_rate), "1.0x", f"{floor_rate / naive_rate:.2f}x", "", ""],
    ]
    labels = {"embedded": "(c1) cganctl, embedded default", "s3": "(c2) cganctl, Redis+PG+S3, 1 worker"}
    for name, text in labels.items():
        if name in results:
            r = results[name]
            rows.append([text, r["images"], fmt(r["wall_s"], 2), fmt(r["images_per_s"]), f"{r['x_naive']:.1f}x", f"{r['floor_over_this']:.2f}x",
                         yes_no(r["meets_goal_vs_naive"]), yes_no(r["meets_goal_vs_floor"])])
    print_table(
        ["path", "images", "seconds", "images/s", "vs naive", "floor/this", f">={GOAL_VS_NAIVE:g}x naive", f"<={GOAL_VS_FLOOR:g}x floor"],
        rows,
        title=f"generate throughput: label {args.label!r}, default model ({report['model']['preset']}), device {device} (product: {product_device})",
    )
    print(
        f"\nnaive path for {args.count} images: {naive['extrapolated_seconds_for_count']:,.1f} s"
        + (f" (EXTRAPOLATED linearly from {args.naive_count} images)" if naive["extrapolated"] else " (measured)")
    )
    ph = naive["phases_s"]
    print(f"naive phases: generate {ph['generate']:.2f} s, save PNG files {ph['save_png_files']:.2f} s, upload {ph['upload_put_object']:.2f} s")
    for name, text in labels.items():
        if name in results:
            r = results[name]
            print(f"{text}: job {r['job_id']}, {r['shards']} shard(s); created->finished {r['job_created_to_finished_s']} s, "
                  f"started->finished {r['job_started_to_finished_s']} s (wall includes CLI start-up and polling)")
    if args.count < 5000:
        print("note: a small --count is dominated by fixed costs (process start-up, torch import, model load); use the full count for figures")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
