"""The wheel is the product: build it, install it into a fresh virtual environment that holds ONLY the
wheel's declared dependencies (linked from the installed ones, so torch is reused, not reinstalled),
and run `cganctl` from a scratch folder: db upgrade, embedded generate and evaluate, and a worker on
Redis + PostgreSQL. An import the wheel does not declare fails here, as it would for a user.

Select with ``-m wheel``.
"""
from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from PIL import Image

from harness.services import ROOT, Worker

pytestmark = [pytest.mark.wheel, pytest.mark.integration]

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SKIP_COPY = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "data", "*.egg-info", "__pycache__", ".pytest_cache", "checkpoints")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that satisfy ``requirements`` and theirs (markers and extras honoured)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(line), "") for line in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = _normal(req.name)
        candidates = [d for d in metadata.distributions(name=req.name) if req.specifier.contains(d.version, prereleases=True)]
        assert candidates, f"declared dependency {req} is not installed"
        dist = candidates[0]
        if key in found:
            if not req.extras:
                continue
        found[key] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            for wanted in sorted(req.extras) or [""]:
                todo.append((sub, wanted))
    return found


def _link_distributions(dists: dict[str, metadata.Distribution], site_packages: Path) -> None:
    """Symlink each distribution's top-level files (packages, modules, .dist-info) into ``site_packages``."""
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            target = site_packages / top
            if not target.exists() and (base / top).exists():
                target.symlink_to(base / top)


def _tiny_reference(root: Path, per_class: int = 3) -> Path:
    for c, name in enumerate(CIFAR_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (25 * c, 200 - 15 * c, (53 * i) % 255)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the built wheel installed (pip resolves its dependencies, offline, from the linked ones)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=SKIP_COPY)
    dist = work / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("cganctl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "scheduler/migrations/alembic.ini" in names and "scheduler/migrations/env.py" in names
    assert any(n.startswith("scheduler/migrations/versions/0001_") for n in names)
    assert "cganmodel/weights/default-generator.safetensors" in names
    assert not any(n.startswith(("tests/", "alembic/", "bench/")) for n in names)
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]

    venv = work / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    _link_distributions(_closure(requires), site_packages)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-index", "--no-cache-dir", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return venv


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CGAN_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(CGAN_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1", **settings)
    return env


def _run(venv: Path, env: dict[str, str], cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "cganctl"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_wheel_runs_from_a_fresh_venv(installed, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _env(tmp_path)
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import scheduler, worker, cganmodel; print(scheduler.__file__, worker.__file__, cganmodel.__file__)"],
        env=env, cwd=cwd, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(path.startswith(str(installed)) for path in where), where  # the wheel's copy, not the source tree

    upgraded = _run(installed, env, cwd, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "at revision 0002" in upgraded.stdout

    generated = _run(installed, env, cwd, "submit", "generate", "--label", "frog", "--count", "20", "--wait", "--json")
    assert generated.returncode == 0, generated.stderr
    job = json.loads(generated.stdout)
    assert job["status"] == "succeeded" and job["progress_done"] == 20

    reference = _tiny_reference(tmp_path / "reference")
    evaluated = _run(installed, env, cwd, "submit", "evaluate", "--no-inception", "--samples-per-class", "2",
                     "--reference", str(reference), "--wait", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)["metrics"]
    assert 0 <= metrics["label_accuracy"] <= 1 and metrics["classifier_fid"] >= 0


def test_wheel_embedded_first_command_migrates(installed, tmp_path):
    """No `db upgrade` first: the embedded SQLite table is created by the packaged migrations on first use."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    listed = _run(installed, _env(tmp_path), cwd, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_wheel_worker_runs_a_job(installed, tmp_path, pg_url, redis_url):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _env(tmp_path, CGAN_DATABASE_URL=pg_url, CGAN_BROKER_URL=redis_url)
    upgraded = _run(installed, env, cwd, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    worker = Worker(env, "wheel", tmp_path / "worker.log", queues="gpu", threads=1, command=[str(installed / "bin" / "cganctl")], cwd=cwd)
    try:
        worker.wait_ready()
        done = _run(installed, env, cwd, "submit", "generate", "--label", "frog", "--count", "8", "--wait", "--json", timeout=300)
        assert done.returncode == 0, done.stderr + worker.log_tail()
        job = json.loads(done.stdout)
        assert job["status"] == "succeeded" and job["worker"].startswith("wheel@")
    finally:
        worker.stop()
