"""The dashboard's job list with 10,000 jobs in the table: how long one page takes to render.

    python bench/ui_list.py [--jobs 10000] [--repeat 30] [--out runs/ui_list.json]

Protocol: a fresh SQLite job table (the embedded default, WAL) in a temporary data folder, created by the
project's Alembic migrations; ``--jobs`` rows inserted in one transaction (mixed kinds and statuses, one a
second apart, realistic spec/progress/metrics JSON). Each page is requested through Starlette's TestClient
(the whole ASGI app in-process: routing, SQL, Jinja2, no network) 3 times to warm up and then ``--repeat``
times; the table gives the median and the 95th percentile of the wall time per request, and the rows shown.
The goal is under 300 ms for a page of the list.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import cpu_model, git_commit  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def rows(count: int) -> list[dict]:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    kinds = ["generate", "generate", "train", "evaluate"]
    statuses = ["succeeded"] * 6 + ["failed", "cancelled", "running", "queued"]
    out = []
    for i in range(count):
        kind, status = kinds[i % len(kinds)], statuses[(i * 7) % len(statuses)]
        created = start + timedelta(seconds=i)
        finished = status in ("succeeded", "failed", "cancelled")
        total = 5000 if kind != "train" else 20000
        spec = (
            {"kind": "generate", "model": "default:1", "counts": {c: 500 for c in CLASSES}, "seed": i, "format": "webdataset", "shard_size": 2500,
             "truncation": None, "min_confidence": None, "classifier": None, "request": {"balanced": True, "per_class": 500}}
            if kind == "generate"
            else {"kind": kind, "preset": "resnet", "dataset": "cifar10", "steps": total, "batch_size": 64, "checkpoint_every": 1000, "seed": i}
        )
        out.append(
            {
                "id": uuid.uuid4().hex, "kind": kind, "status": status, "queue": "gpu" if i % 3 else "cpu", "priority": i % 10,
                "spec": spec, "created_at": created, "updated_at": created + timedelta(seconds=30),
                "started_at": created + timedelta(seconds=2) if status != "queued" else None,
                "finished_at": created + timedelta(seconds=30) if finished else None,
                "attempts": 1 if status != "queued" else 0, "max_attempts": 3, "worker": f"gpu{i % 8}@host{i % 4}" if status != "queued" else None,
                "progress_done": total if status == "succeeded" else (i * 37) % total, "progress_total": total,
                "progress_unit": "steps" if kind == "train" else "images",
                "progress_info": {"d_loss": 0.61, "g_loss": 1.42} if kind == "train" else None,
                "error": "RuntimeError: CUDA out of memory" if status == "failed" else None,
                "metrics": {"images": total, "count_per_class": {c: 500 for c in CLASSES}} if status == "succeeded" else None,
                "artifacts": {"manifest": "jobs/x/manifest.json"} if status == "succeeded" else None,
                "cancel_requested": status == "cancelled", "retry_of": None,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from sqlalchemy import insert, select
    from starlette.testclient import TestClient

    from scheduler.db import Job
    from scheduler.runtime import Runtime
    from scheduler.service import Service
    from scheduler.settings import Settings
    from scheduler.ui.app import create_app

    for name in [k for k in os.environ if k.startswith("CGAN_")]:
        del os.environ[name]
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Runtime(Settings(data_dir=Path(tmp) / "data")))
        table = service.table  # creates the schema (Alembic)
        began = time.perf_counter()
        data = rows(args.jobs)
        with table.engine.begin() as connection:
            connection.execute(insert(Job), data)
        inserted_s = time.perf_counter() - began
        with table.engine.connect() as connection:
            ids = list(connection.execute(select(Job.id).order_by(Job.created_at.desc(), Job.id.desc())).scalars())
        deep = ids[min(len(ids) - 51, len(ids) - 1) if len(ids) > 51 else 0]

        client = TestClient(create_app(service))
        pages = {
            "first page (50)": "/",
            "status=succeeded": "/?status=succeeded",
            "kind=generate&status=running": "/?kind=generate&status=running",
            "last page (after cursor)": f"/?after={deep}",
            "limit=500": "/?limit=500",
        }
        results = []
        for name, path in pages.items():
            for _ in range(3):
                assert client.get(path).status_code == 200
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                response = client.get(path)
                times.append(time.perf_counter() - start)
                assert response.status_code == 200
            shown = response.text.count('<td class="mono"><a href="/jobs/')
            times.sort()
            results.append({
                "page": name, "path": path, "rows_shown": shown,
                "median_ms": round(1000 * statistics.median(times), 1),
                "p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 1),
                "bytes": len(response.content),
            })

    print(f"{args.jobs} jobs in a SQLite job table (inserted in {inserted_s:.2f} s); {args.repeat} requests a page after 3 warm-ups")
    print(f"{'page':32} {'rows':>5} {'median ms':>10} {'p95 ms':>8} {'KB':>6}")
    for r in results:
        print(f"{r['page']:32} {r['rows_shown']:>5} {r['median_ms']:>10} {r['p95_ms']:>8} {r['bytes'] / 1024:>6.0f}")
    report = {
        "protocol": __doc__.split("Protocol: ", 1)[1].strip(),
        "jobs": args.jobs, "repeat": args.repeat, "results": results,
        "cpu_model": cpu_model(), "cores_visible": os.cpu_count(), "load_average": os.getloadavg(), "commit": git_commit(),
        "python": sys.version.split()[0], "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
