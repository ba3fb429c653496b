"""Small helpers shared by the bench scripts: machine facts, a plain-text table, the JSON report."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from harness.services import ROOT, usable_cores


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_facts(*, cuda_used: bool) -> dict[str, Any]:
    """CPU model, cores, torch version and threads (this process), CUDA, load average."""
    import torch

    facts: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cuda_available": torch.cuda.is_available(),
        "cuda_used": cuda_used,
        "cuda_device": torch.cuda.get_device_name(0) if cuda_used else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "git_commit": git_commit(),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        facts["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return facts


def finish_facts(facts: dict[str, Any]) -> None:
    facts["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        facts["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass


def print_facts(facts: dict[str, Any]) -> None:
    cuda = f"yes ({facts['cuda_device']})" if facts["cuda_used"] else ("no (available but not used)" if facts["cuda_available"] else "no")
    print(
        f"machine: {facts['cpu_model']}, {facts['usable_cores']} usable cores (cpu_count {facts['cpu_count']}); "
        f"torch {facts['torch_version']}, {facts['torch_threads']} torch threads in this process; CUDA used: {cuda}"
    )
    load = facts.get("loadavg_at_start")
    if load and load[0] > 0.5 * facts["usable_cores"]:
        print(f"WARNING: load average {load[0]} at start on {facts['usable_cores']} cores: other work is running, figures will be low")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        # first column left-aligned (labels), the rest right-aligned (numbers)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    if title:
        print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def fmt(value: float | None, digits: int = 1) -> str | None:
    return None if value is None else f"{value:,.{digits}f}"


def _json_default(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {path}")
