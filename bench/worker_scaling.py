"""Worker scaling: one generate job through the real services with 1, 2 and 3 worker processes.

    python -m bench.worker_scaling --count 50000 --shard-size 2500 --out runs/bench/worker-scaling.json

Services: SeaweedFS (``tests/s3server.start_weed``), a fresh PostgreSQL database ``cganctl_bench_<random>``
(migrated with ``cganctl db upgrade``, dropped at the end), Redis db 7 (flushed before and after).
For each worker count K in ``--workers`` (default 1,2,3): start K ``cganctl worker --queues gpu
--hostname wK@%h`` processes, each with ``OMP_NUM_THREADS=--threads-per-worker`` (default: usable
cores // K, at least 1; on a 2-core machine 2 // K), wait until all are ready, then time
``cganctl submit generate --label L --count N --shard-size S --wait --json`` from launch to exit
(job ``succeeded``), then stop the workers. Reported: wall time, images/s, speed-up over the first
configuration, the shard-to-worker spread (``cganctl jobs show ID --json``, ``shards[].worker``) and
per-shard seconds (the shard rows' ``started_at``/``finished_at``, read from the job table: the first
shard of each worker includes loading the model).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.benchutil import finish_facts, fmt, machine_facts, print_facts, print_table, write_json
from harness.services import cganctl, keep_or_remove, real_services, submit_and_wait, usable_cores, workers


def _t(value) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def run_config(env: dict[str, str], k: int, threads: int, args, tmp: Path) -> dict:
    submit = ["submit", "generate", "--label", args.label, "--count", str(args.count), "--shard-size", str(args.shard_size), "--wait", "--json"]
    with workers(env, k, tmp / f"logs-{k}", threads=threads) as started:
        print(f"  {k} worker(s) ready ({threads} thread(s) each); submitting ...", flush=True)
        job, wall = submit_and_wait(env, *submit, timeout=args.timeout)
        names = [w.name for w in started]
    job_id = job["id"]
    details = json.loads(cganctl(env, "jobs", "show", job_id, "--json", timeout=120, check=True).stdout)

    shards = []
    for s in details["shards"]:
        started_at, finished_at = _t(s["started_at"]), _t(s["finished_at"])
        seconds = (finished_at - started_at).total_seconds() if started_at and finished_at else None
        worker = (s["worker"] or "?").split("@", 1)[0]
        shards.append({"index": s["index"], "worker": worker, "worker_full": s["worker"], "count": s["count"], "attempts": s["attempts"],
                       "started_at": started_at, "finished_at": finished_at, "seconds": None if seconds is None else round(seconds, 3)})

    per_worker: dict[str, dict] = {}
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for s in shards:
        by_worker[s["worker"]].append(s)
    for name in sorted(set(names) | set(by_worker)):
        own = sorted(by_worker.get(name, []), key=lambda s: s["started_at"] or dt.datetime.max.replace(tzinfo=dt.timezone.utc))
        secs = [s["seconds"] for s in own if s["seconds"] is not None]
        rest = secs[1:]
        per_worker[name] = {
            "shards": len(own),
            "images": sum(s["count"] for s in own),
            "busy_s": round(sum(secs), 3),
            "first_shard_s": secs[0] if secs else None,  # includes the model load
            "mean_later_shard_s": round(statistics.fmean(rest), 3) if rest else None,
            "shard_indices": [s["index"] for s in own],
        }

    created, started, finished = (_t(job.get(k_)) for k_ in ("created_at", "started_at", "finished_at"))
    all_secs = [s["seconds"] for s in shards if s["seconds"] is not None]
    first_start = min((s["started_at"] for s in shards if s["started_at"]), default=None)
    last_finish = max((s["finished_at"] for s in shards if s["finished_at"]), default=None)
    return {
        "workers": k,
        "threads_per_worker": threads,
        "images": args.count,
        "shard_size": args.shard_size,
        "job_id": job_id,
        "wall_s": round(wall, 3),
        "images_per_s": round(args.count / wall, 1),
        "job_created_to_finished_s": round((finished - created).total_seconds(), 3) if created and finished else None,
        "job_started_to_finished_s": round((finished - started).total_seconds(), 3) if started and finished else None,
        "submit_to_first_shard_start_s": round((first_start - created).total_seconds(), 3) if first_start and created else None,
        "last_shard_to_job_finished_s": round((finished - last_finish).total_seconds(), 3) if finished and last_finish else None,
        "shard_seconds": {
            "min": min(all_secs) if all_secs else None,
            "median": round(statistics.median(all_secs), 3) if all_secs else None,
            "max": max(all_secs) if all_secs else None,
        },
        "redelivered_shards": sum(1 for s in shards if s["attempts"] > 1),
        "per_worker": per_worker,
        "shards": shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50_000, help="images in the job (default 50000)")
    parser.add_argument("--shard-size", type=int, default=2500, help="images per shard (default 2500)")
    parser.add_argument("--label", default="frog")
    parser.add_argument("--workers", default="1,2,3", help="comma-separated worker counts to run (default 1,2,3)")
    parser.add_argument("--threads-per-worker", type=int, default=None, help="OMP_NUM_THREADS of each worker (default: usable cores // workers, at least 1)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one job may take")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary work folder (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (worker logs, S3 data)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    try:
        counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        parser.error("--workers takes comma-separated integers, e.g. 1,2,3")
    if not counts or min(counts) < 1 or args.count < 1 or args.shard_size < 1:
        parser.error("--workers, --count and --shard-size must be positive")

    import torch

    from cganmodel.pretrained import default_model_files

    classes = json.loads(default_model_files("default-generator")[1].read_text())["classes"]
    if args.label not in classes:
        parser.error(f"unknown label {args.label!r}; the default model knows {', '.join(classes)}")
    cores = usable_cores()
    facts = machine_facts(cuda_used=torch.cuda.is_available())  # workers use CUDA when it is available
    print_facts(facts)
    report: dict = {
        "bench": "worker_scaling",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": facts,
        "results": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="cganctl-bench-scale-", dir=args.workdir))
    try:
        print("starting SeaweedFS, a fresh PostgreSQL database and Redis db 7 ...", flush=True)
        with real_services(tmp / "services") as env:
            for k in counts:
                threads = args.threads_per_worker or max(1, cores // k)
                print(f"\n{k} worker(s): {args.count} images, shards of {args.shard_size}", flush=True)
                result = run_config(env, k, threads, args, tmp)
                report["results"].append(result)
                print(f"  {result['wall_s']:.1f} s, {result['images_per_s']:,.1f} images/s", flush=True)
    finally:
        finish_facts(facts)
        keep_or_remove(tmp, args.keep)

    results = report["results"]
    base = results[0]
    for r in results:
        r["speedup_vs_first"] = round(r["images_per_s"] / base["images_per_s"], 2)
        r["efficiency_vs_first"] = round(r["speedup_vs_first"] * base["workers"] / r["workers"], 2)

    shards_total = -(-args.count // args.shard_size)
    print_table(
        ["workers", "threads each", "wall s", "images/s", "speed-up", "efficiency", "job run s", "shard s min/med/max", "shards per worker"],
        [
            [
                r["workers"], r["threads_per_worker"], fmt(r["wall_s"], 2), fmt(r["images_per_s"]), f"{r['speedup_vs_first']:.2f}x",
                f"{r['efficiency_vs_first']:.0%}", fmt(r["job_started_to_finished_s"], 2),
                "/".join(fmt(r["shard_seconds"][k_], 1) or "-" for k_ in ("min", "median", "max")),
                ", ".join(f"{w}:{p['shards']}" for w, p in r["per_worker"].items()),
            ]
            for r in results
        ],
        title=f"worker scaling: {args.count} x {args.label!r}, {shards_total} shards of {args.shard_size}, "
        f"{facts['usable_cores']} cores, CUDA {'yes' if facts['cuda_used'] else 'no'}",
    )
    for r in results:
        print_table(
            ["worker", "shards", "images", "busy s", "first shard s (incl. model load)", "mean later shard s"],
            [[w, p["shards"], p["images"], fmt(p["busy_s"], 2), fmt(p["first_shard_s"], 2), fmt(p["mean_later_shard_s"], 2)] for w, p in r["per_worker"].items()],
            title=f"{r['workers']} worker(s), job {r['job_id']}: submit->first shard start {r['submit_to_first_shard_start_s']} s, "
            f"last shard->job succeeded {r['last_shard_to_job_finished_s']} s, redelivered shards {r['redelivered_shards']}",
        )
    print("\nspeed-up and efficiency are relative to the first configuration (images/s, wall time from submit to succeeded)")
    if max(counts) > cores:
        print(f"note: {cores} usable cores: with more workers than cores, CPU workers share cores and cannot scale linearly")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
