"""scripts/gpu-run --smoke: the prepared GPU run's own code, on the CPU at tiny sizes (so CI keeps it working).

One smoke run (missing checkpoint -> fresh start), then a resumed one from its checkpoint, a corrupt
checkpoint, ``--unpack`` of the returned files, and the real run refused without CUDA.
"""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "gpu-run")


def gpu_run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-run")
    result = gpu_run("--smoke", "--out", str(tmp / "out"), "--work", str(tmp / "work"), "--checkpoint", str(tmp / "none"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp, result


def test_smoke_writes_the_files_and_metrics(smoke) -> None:
    tmp, result = smoke
    out = tmp / "out"
    assert "smoke: " in result.stdout and f"no checkpoint in {tmp / 'none'}: starting fresh" in result.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-1.tar", "gpu-default.tar", "metrics.json", "samples-1.npz", "samples.png", "summary.md"]
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"].startswith("smoke")
    assert m["tests"]["rc"] == 0 and ("skipped" in m["tests"]["summary"] or "passed" in m["tests"]["summary"])
    measured = [r for r in m["bench"]["rows"] if "g_steps_per_s" in r]
    assert {("biggan", "eager"), ("biggan", "plain-fp32")} <= {(r["preset"], r["variant"]) for r in measured}
    assert all(r["g_steps_per_s"] > 0 and r["real_images_per_s"] > 0 for r in measured)
    assert m["train"]["from_step"] == 0 and m["train"]["to_step"] >= 1 and m["train"]["preset"] == "biggan"
    g = m["generate"]
    assert g["product_status"] == "succeeded" and g["count"] == 500
    assert g["forward_alone_s"] > 0 and g["encode_upload_alone_s"] > 0 and g["product_embedded_s"] > 0
    score = m["score"]["trained"]
    assert 0 <= score["label_accuracy"] <= 1 and score["classifier_fid"] >= 0
    assert m["files"]["problems"] == []
    with np.load(out / "samples-1.npz") as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (100, 32, 32, 3)
        assert sorted(np.bincount(npz["labels"])) == [10] * 10 and list(npz["classes"])[6] == "frog"
    with tarfile.open(out / "checkpoint-1.tar") as tar:
        assert {"state.json", "run.json", "generator.safetensors", "optim.safetensors"} <= set(tar.getnames())
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert "## (e) scores" in (out / "summary.md").read_text()


def test_smoke_resumes_from_its_checkpoint_and_refuses_a_corrupt_one(smoke) -> None:
    tmp, _ = smoke
    first = json.loads((tmp / "out" / "metrics.json").read_text())["train"]["to_step"]
    result = gpu_run("--smoke", "--out", str(tmp / "out2"), "--work", str(tmp / "work2"), "--checkpoint", str(tmp / "work" / "checkpoint"),
                     "--skip", "tests,bench,generate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {tmp / 'work' / 'checkpoint'} at step {first}" in result.stdout
    m = json.loads((tmp / "out2" / "metrics.json").read_text())
    assert m["train"]["from_step"] == first and m["train"]["sessions"] == 2
    assert "bench" not in m and "generate" not in m

    broken = tmp / "broken"
    broken.mkdir()
    for p in (tmp / "work" / "checkpoint").iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "generator.safetensors").write_bytes(b"\x00" * 64)
    result = gpu_run("--smoke", "--out", str(tmp / "out3"), "--checkpoint", str(broken), "--skip", "tests,bench,generate")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {broken}: checkpoint is corrupt: generator.safetensors")
    assert "Traceback" not in result.stderr


def test_unpack_restores_the_checkpoint(smoke) -> None:
    tmp, _ = smoke
    result = gpu_run("--unpack", str(tmp / "out"), "--checkpoint", str(tmp / "restored"), "--work", str(tmp / "weights"))
    assert result.returncode == 0, result.stderr
    original = tmp / "work" / "checkpoint"
    for p in original.iterdir():
        assert (tmp / "restored" / p.name).read_bytes() == p.read_bytes(), p.name
    assert (tmp / "weights" / "gpu-default.safetensors").is_file() and (tmp / "weights" / "gpu-default.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real run would start")
def test_real_run_without_cuda_is_refused(tmp_path) -> None:
    result = gpu_run("--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: no CUDA device: the real GPU run needs one (scripts/gpu-run --smoke runs the tiny CPU version)"
    assert not (tmp_path / "out").exists()


def test_pack_leaves_what_the_gpu_run_does_not_read_behind_and_restores_it(tmp_path) -> None:
    """``scripts/gpu-pack --leave`` takes the CPU default's training state and the older default generators out
    of git's index (files kept on disk, listed in .git/info/exclude), so what travels fits 64 MiB;
    ``--restore`` puts the index and the exclude file back exactly as they were."""
    import os
    import sys

    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=120)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # this venv's python3 there

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    def pack(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(repo / "scripts" / "gpu-pack"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120)

    exclude = repo / ".git" / "info" / "exclude"
    before_exclude, before_index = exclude.read_text(), git("ls-files", "-s")
    from scheduler.model_registry import BUILTIN_FILES

    checkpoint = "recipes/checkpoints/default-generator"
    *older, latest = BUILTIN_FILES["default"]
    old = [f"cganmodel/weights/{stem}.{ext}" for stem in older for ext in ("safetensors", "json")]
    assert git("ls-files", checkpoint) and all(git("ls-files", f) for f in old)

    for _ in range(2):  # twice: idempotent
        done = pack("--leave")
        assert done.returncode == 0, done.stderr
    travels = float(done.stdout.split("travels: ")[1].split(" MiB")[0])
    assert travels < 24, done.stdout  # the tree without them (gpu-carry/ adds about 24 MiB)
    assert not git("ls-files", checkpoint) and not any(git("ls-files", f) for f in old)
    assert (repo / checkpoint / "optim.safetensors").is_file() and all((repo / f).is_file() for f in old)  # still on disk
    assert checkpoint not in git("ls-files", "--others", "--exclude-standard")  # ignored: does not travel
    assert git("ls-files", f"cganmodel/weights/{latest}.safetensors")  # the latest travels
    assert exclude.read_text().count("left behind for the GPU trip") == 1  # one block, not one per --leave

    done = pack("--restore")
    assert done.returncode == 0 and f"restored {1 + len(old)} " in done.stdout, done.stdout + done.stderr
    assert git("ls-files", "-s") == before_index and exclude.read_text() == before_exclude
    assert git("status", "--porcelain") == ""
    assert pack("--bogus").returncode == 2
