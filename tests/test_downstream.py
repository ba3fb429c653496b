"""Downstream usefulness: PRDC, CAS, augmentation gain, and `cganctl submit evaluate --downstream`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cganmodel.data import ImageData
from cganmodel.downstream import downstream_metrics, prdc, prdc_subset, stratified_subset
from harness.services import cganctl, settings_from_env

torch.set_num_threads(1)

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --------------------------------------------------------------------------------------- PRDC


def test_prdc_of_a_set_against_itself_and_a_shifted_set():
    x = np.random.default_rng(0).normal(size=(400, 8))
    same = prdc(x, x, chunk=64)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0, abs=1e-9)
    twin = prdc(x, np.random.default_rng(1).normal(size=(400, 8)))
    assert 0.6 < twin["precision"] <= 1 and 0.6 < twin["recall"] <= 1 and 0.6 < twin["coverage"] <= 1
    assert 0.6 < twin["density"] < 1.4
    shifted = prdc(x, x + 1.5)
    for name in ("precision", "recall", "density", "coverage"):
        assert shifted[name] < twin[name] - 0.2, (name, shifted, twin)
    assert prdc(x, x, chunk=7) == same  # chunking changes nothing
    with pytest.raises(ValueError):
        prdc(x[:5], x)  # fewer points than k + 1
    assert prdc_subset(x, 500) is x
    assert np.array_equal(prdc_subset(x, 50), prdc_subset(x, 50)) and len(prdc_subset(x, 50)) == 50


# --------------------------------------------------------------------------------------- CAS / gain


def _separable(n_per_class: int, seed: int, classes: list[str]) -> ImageData:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    images = rng.integers(0, 120, size=(len(labels), 32, 32, 3))
    images[np.arange(len(labels)), :, :, labels % 3] += 120
    return ImageData(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels), classes)


def test_cas_and_augmentation_gain_shapes_and_determinism():
    classes = ["red", "green", "blue"]
    train, test = _separable(20, 0, classes), _separable(6, 1, classes)
    gen = _separable(8, 2, classes)
    subset = stratified_subset(train, 0.25, seed=3)
    assert np.bincount(subset.labels.numpy()).tolist() == [5, 5, 5]
    assert torch.equal(stratified_subset(train, 0.25, seed=3).images, subset.images)

    def run():
        return downstream_metrics(gen.images.numpy(), gen.labels.numpy(), train, test, fraction=0.25, steps=6, batch_size=8, seed=0)

    m = run()
    assert 0 <= m["cas_accuracy"] <= 1 and set(m["cas_accuracy_per_class"]) == set(classes)
    assert m["augmentation_gain"] == pytest.approx(m["augmentation_augmented_accuracy"] - m["augmentation_baseline_accuracy"])
    for _name, row in m["augmentation_gain_per_class"].items():
        assert row["gain"] == pytest.approx(row["augmented"] - row["baseline"])
    p = m["downstream_protocol"]
    assert p["steps"] == 6 and p["batch_size"] == 8 and p["real_subset_images"] == 15 and p["test_images"] == 18
    assert p["generated_images"] == 24 and p["generated_per_class"] == [8, 8, 8]
    again = run()
    assert again == m  # seeded: bit-identical
    with pytest.raises(ValueError):
        stratified_subset(train, 0.0, seed=0)


# --------------------------------------------------------------------------------------- the job


def _image_tree(root: Path, layout: dict[str, int], classes: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for split, n in layout.items():
        for c in classes:
            folder = root / split / c if split else root / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _job_rows(env) -> list:
    from scheduler import db
    from scheduler.jobs import JobTable

    settings = settings_from_env(env)
    if not (settings.data_dir / "cganctl.db").exists():
        return []
    return JobTable(db.get_engine(settings)).list(limit=1000)


FAST = ["--samples-per-class", "3", "--reference-limit", "20", "--no-inception"]


def test_evaluate_with_downstream_writes_the_metrics(embedded_env, tmp_path):
    ref = _image_tree(tmp_path / "ref", {"train": 4, "test": 2}, CIFAR)
    args = ["--downstream", "--downstream-steps", "3", "--downstream-per-class", "2", "--downstream-fraction", "0.5"]
    out = cganctl(embedded_env, "submit", "evaluate", "--reference", str(ref), *FAST, *args, "--truncation", "1.5", "--json", check=True)
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded", job
    m = job["metrics"]
    assert m["protocol"]["truncation"] == 1.5 and m["downstream_protocol"]["truncation"] == 1.5  # both sample sets
    assert m["prdc_protocol"]["fake"].endswith("noise truncated at 1.5"), m["prdc_protocol"]
    for key in ("cas_accuracy", "augmentation_gain", "precision", "recall", "density", "coverage"):
        assert isinstance(m[key], float), key
    assert m["downstream_protocol"]["steps"] == 3 and m["downstream_protocol"]["real_subset_images"] == 20
    assert m["downstream_protocol"]["generated_images"] == 20 and m["downstream_protocol"]["test_images"] == 20
    assert m["prdc_protocol"]["feature_space"] == "classifier" and m["prdc_protocol"]["real_count"] == 20
    assert m["prdc_protocol"]["fake_count"] == 30
    assert set(m["per_class"]["frog"]) >= {"cas_accuracy", "augmentation_gain", "augmentation_baseline"}
    fetched = cganctl(embedded_env, "results", "download", job["id"], "--to", str(tmp_path / "ev"), check=True).stdout
    assert fetched.strip().endswith("saved in " + str(tmp_path / "ev") + ": metrics.json, samples.png")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["cas_accuracy"] == m["cas_accuracy"]
    # the job's progress ends complete, not at a throttled stage's last count
    assert (job["progress_done"], job["progress_total"], job["progress_info"]) == (30, 30, {"stage": "done"}), job
    shown = cganctl(dict(embedded_env, COLUMNS="80"), "jobs", "show", job["id"], check=True).stdout
    assert "usefulness" in shown and "CAS" in shown
    assert f"scores label accuracy {m['label_accuracy']:.1%}" in shown and "classifier FID" in shown
    # the per-class table fits 80 columns: every header whole, no cell cut short, accuracies in percent
    after = shown[shown.index("usefulness"):shown.index("artifacts")]
    header_top = after.rindex("\n", 0, after.index("\nclass "))  # headers take two lines
    table = after[header_top:]
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80
    for header in ("label", "acc. %", "intra-FID", "aug. real", "+ gen.", "gain"):
        assert header in table, header
    frog = next(line for line in table.splitlines() if line.startswith("frog "))
    assert f"{m['per_class']['frog']['cas_accuracy'] * 100:.1f}" in frog.split()


@pytest.mark.parametrize(
    "layout, classes, extra, message",
    [
        ({"": 3}, CIFAR, [], "--downstream needs a reference with a test split"),
        ({"train": 3, "test": 1}, CIFAR, ["--downstream-fraction", "0"], "invalid --downstream-fraction"),
        ({"train": 3, "test": 1}, CIFAR, ["--downstream-fraction", "1.5"], "invalid --downstream-fraction"),
        ({"train": 3, "test": 1}, CIFAR[:9], [], "has classes"),
        ({"train": 3, "test": 1}, CIFAR, ["--truncation", "0.01"], "invalid --truncation 0.01: should be greater than or equal to 0.05"),
    ],
)
def test_bad_downstream_input(embedded_env, tmp_path, layout, classes, extra, message):
    ref = _image_tree(tmp_path / "ref", layout, classes)
    result = cganctl(embedded_env, "submit", "evaluate", "--reference", str(ref), *FAST, "--downstream", *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert _job_rows(embedded_env) == []


def test_downstream_options_need_downstream(embedded_env):
    result = cganctl(embedded_env, "submit", "evaluate", *FAST, "--downstream-steps", "5")
    assert result.returncode == 2 and result.stderr.strip() == "error: --downstream-steps goes with --downstream"
    assert _job_rows(embedded_env) == []


def test_reference_cache_follows_the_folder_content_and_survives_corruption(embedded_env, tmp_path):
    """Rewriting the images under a folder reference recomputes its statistics; a corrupt cache object is recomputed."""
    ref = _image_tree(tmp_path / "ref", {"": 2}, CIFAR)
    store = settings_from_env(embedded_env).local_store_dir

    def evaluate() -> dict:
        out = cganctl(embedded_env, "submit", "evaluate", "--reference", str(ref), *FAST, "--json", check=True)
        return json.loads(out.stdout)["metrics"]

    first = evaluate()
    cached = sorted((store / "cache" / "reference-stats").iterdir())
    assert len(cached) == 1
    assert evaluate()["classifier_fid"] == first["classifier_fid"]  # read back from the cache
    rng = np.random.default_rng(5)
    for path in sorted(ref.rglob("*.png")):  # same names, new pixels (a folder's own mtime need not change)
        Image.fromarray(rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)).save(path)
    changed = evaluate()
    assert len(list((store / "cache" / "reference-stats").iterdir())) == 2
    assert changed["classifier_fid"] != first["classifier_fid"]
    for path in (store / "cache" / "reference-stats").iterdir():
        path.write_bytes(b"garbage")
    assert evaluate()["classifier_fid"] == changed["classifier_fid"]  # recomputed, not a failed job


def test_a_task_reads_the_reference_once_for_downstream(tmp_path):
    """evaluate --downstream asks for the reference's train split twice (its FID statistics, then the downstream
    classifiers): the task reads it once and holds it only until that second use; another task reads it again."""
    from harness.datasets import tiny_image_folder
    from scheduler.runtime import Runtime
    from scheduler.settings import Settings
    from scheduler.specs import TrainSpec
    from worker.context import JobContext

    data = tiny_image_folder(tmp_path / "data" / "datasets" / "tiny")
    runtime = Runtime(Settings(data_dir=tmp_path / "data"))
    spec = TrainSpec(preset="mlp", dataset=str(data), steps=5, batch_size=8, checkpoint_every=5, seed=0)
    job = runtime.table.create(spec, queue="cpu", priority=0, max_attempts=1, progress_total=5, progress_unit="steps")
    task = JobContext(runtime, job)
    first = task.load_dataset(str(data), "train", keep=True)
    assert len(first.images) == 24 and task.load_dataset(str(data), "train") is first
    assert task.load_dataset(str(data), "train") is not first  # taken back by its second use: not held any longer
    assert JobContext(runtime, job).load_dataset(str(data), "train") is not first
