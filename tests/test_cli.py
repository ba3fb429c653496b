"""`cganctl` as a user runs it, on the embedded default (SQLite, local folder, in-process jobs)."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import pytest

from harness.datasets import tiny_image_folder
from harness.services import ROOT, cganctl, settings_from_env
from scheduler.model_registry import builtin_model

DEFAULT_REF = builtin_model("default").ref  # the latest shipped default generator


def _job_rows(env) -> list:
    from scheduler import db
    from scheduler.jobs import JobTable

    settings = settings_from_env(env)
    if not (settings.data_dir / "cganctl.db").exists() and settings.database_url is None:
        return []
    return JobTable(db.get_engine(settings)).list(limit=1000)


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys\n"
        "from scheduler.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'sqlalchemy', 'celery', 'boto3', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out
    assert "submit" in out and "jobs" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--label", "frgo", "--count", "10"], f"unknown label 'frgo' for model {DEFAULT_REF}; valid labels: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck"),
        (["--label", "frog", "--count", "0"], "--count must be at least 1"),
        (["--label", "frog", "--count", "-3"], "--count must be at least 1"),
        (["--label", "frog", "--count", "2000000"], "above the maximum of 1000000"),
        (["--label", "frog", "--balanced", "--count", "10"], "--label and --balanced conflict"),
        (["--label", "frog", "--count", "10", "--model", "nope"], "unknown model 'nope'"),
        (["--label", "frog", "--count", "10", "--format", "zip"], "invalid --format 'zip': should be 'webdataset', 'imagefolder' or 'npz'"),
        (["--label", "frog", "--count", "10", "--min-confidence", "1.5"], "invalid --min-confidence 1.5: should be less than 1"),
        (["--label", "frog", "--count", "10", "--model", "default:"], "invalid model reference 'default:': nothing after ':'"),
        (["--fill-to", "10", "--dataset", "/does/not/exist"], "does not exist"),
        (["--label", "frog", "--count", "10", "--priority", "12"], "--priority must be between 0"),
        # typed options and unknown names: Typer's usage errors, also one line (no usage box)
        (["--label", "frog", "--count", "abc"], "Invalid value for '--count'"),
        (["--label", "frog", "--count", "10", "--truncation", "abc"], "Invalid value for '--truncation'"),
        (["--label", "frog", "--count", "10", "--bogus"], "No such option: --bogus (see 'cganctl submit generate --help')"),
    ],
)
def test_bad_generate_input(embedded_env, args, message):
    result = cganctl(embedded_env, "submit", "generate", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert _job_rows(embedded_env) == []


def test_an_empty_job_list_says_so(embedded_env):
    assert cganctl(embedded_env, "jobs", "list", check=True).stdout.strip() == "no jobs yet (cganctl submit generate --label frog --count 100)"
    assert cganctl(embedded_env, "jobs", "list", "--status", "failed", "--kind", "train", check=True).stdout.strip() == "no failed train jobs"


def test_unknown_command_is_one_error_line_and_a_bare_group_shows_its_help(embedded_env):
    result = cganctl(embedded_env, "submit", "generat")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: No such command 'generat'. Did you mean 'generate'? (see 'cganctl submit --help')"]
    bare = cganctl(embedded_env, "submit")
    assert bare.returncode == 2 and "generate" in bare.stdout and bare.stderr.strip() == ""
    assert "Traceback" not in result.stderr + bare.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["worker", "--pool", "bogus"], "error: Invalid value for '--pool': 'bogus' is not one of 'solo', 'threads', 'prefork'. (see 'cganctl worker --help')"),
        (["worker", "--queues", "a b,,c"], "error: invalid queue name 'a b' in --queues 'a b,,c': comma-separated names of 1 to 64"),
        (["worker", "--queues", "gpu,"], "error: invalid queue name '' in --queues 'gpu,'"),
        (["worker", "--concurrency", "0"], "error: Invalid value for '--concurrency' / '-c': Input should be greater than or equal to 1"),
        (["results", "download", "abcd", "--to", "x", "--layout", "bogus"], "error: Invalid value for '--layout': 'bogus' is not one of 'webdataset', 'imagefolder'."),
    ],
)
def test_bad_worker_and_download_options_are_one_line_exit_2(embedded_env, args, message):
    """Checked before the broker is: the same answer with or without one; no worker starts on a queue no submit can name."""
    result = cganctl(dict(embedded_env, CGAN_BROKER_URL="redis://127.0.0.1:1/0"), *args, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_a_worker_without_pytorch_does_not_start():
    """A worker that cannot import torch (a wheel installed without it, a broken CUDA build) would take tasks and
    fail each: it refuses to start, one error line, before it touches the broker."""
    import os

    code = "import sys\nsys.modules['torch'] = None\nsys.argv = ['cganctl', 'worker']\nfrom scheduler.cli import main\nmain()\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGAN_")}
    env["CGAN_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there: the check comes first
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: the worker needs PyTorch (torch and torchvision, README 'Installing the wheel'): ModuleNotFoundError: "
        "import of torch halted; None in sys.modules"], result.stderr


@pytest.mark.parametrize(
    "variable, value, what",
    [
        ("CGAN_BROKER_URL", "redis://127.0.0.1:1/0", "broker"),
        ("CGAN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/nothing", "database"),
        ("CGAN_S3_ENDPOINT_URL", "http://127.0.0.1:1", "S3"),
    ],
)
def test_unreachable_service_is_one_line_and_no_row(embedded_env, variable, value, what):
    env = dict(embedded_env, **{variable: value})
    if variable == "CGAN_S3_ENDPOINT_URL":
        env.update(CGAN_S3_BUCKET="b", CGAN_S3_ACCESS_KEY_ID="k", CGAN_S3_SECRET_ACCESS_KEY="s")
    result = cganctl(env, "submit", "generate", "--label", "frog", "--count", "10", timeout=120)
    assert result.returncode == 3, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and ("unreachable" in lines[0] or "failed" in lines[0]), result.stderr
    if variable != "CGAN_DATABASE_URL":
        assert _job_rows(dict(env, CGAN_BROKER_URL="", CGAN_S3_BUCKET="")) == []


def test_s3_without_credentials_is_said_so_not_unreachable(embedded_env, tmp_path):
    """No key anywhere (settings, AWS_* variables, ~/.aws): a setting is missing, and nothing was sent."""
    env = {k: v for k, v in embedded_env.items() if not k.startswith("AWS_")}
    env.update(CGAN_S3_BUCKET="b", CGAN_S3_ENDPOINT_URL="http://127.0.0.1:1", HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true")
    result = cganctl(env, "submit", "generate", "--label", "frog", "--count", "10", timeout=120)
    assert result.returncode == 3 and result.stderr.strip().splitlines() == [
        "error: no S3 credentials for http://127.0.0.1:1: set CGAN_S3_ACCESS_KEY_ID and CGAN_S3_SECRET_ACCESS_KEY "
        "(or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role)"], result.stderr
    assert _job_rows(dict(env, CGAN_S3_BUCKET="")) == []


def test_embedded_generate_end_to_end(embedded_env, tmp_path):
    result = cganctl(embedded_env, "submit", "generate", "--label", "frog", "--label", "cat", "--count", "130", "--shard-size", "50", "--seed", "7", "--wait")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "succeeded" in out and "130 images" in out and "written to" in out
    job_id = out.split()[1]

    shown = json.loads(cganctl(embedded_env, "jobs", "show", job_id, "--json", check=True).stdout)
    assert shown["status"] == "succeeded" and shown["progress_done"] == 130 and shown["attempts"] == 1
    assert [s["count"] for s in shown["shards"]] == [50, 50, 30]
    assert shown["metrics"]["count_per_class"] == {"cat": 65, "frog": 65}
    objects = settings_from_env(embedded_env).local_store_dir / "jobs" / shown["id"]
    manifest = json.loads((objects / "manifest.json").read_text())
    assert manifest["count"] == 130 and manifest["seed"] == 7 and manifest["model"]["ref"] == DEFAULT_REF
    for entry in manifest["files"]:
        assert hashlib.sha256((objects / "shards" / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    assert (objects / "contact-sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    listed = json.loads(cganctl(embedded_env, "jobs", "list", "--kind", "generate", "--json", check=True).stdout)
    assert [j["id"] for j in listed] == [job_id]

    dest = tmp_path / "out"
    cganctl(embedded_env, "results", "download", job_id, "--to", str(dest), "--layout", "imagefolder", check=True)
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(dest))
    assert len(folder) == 130 and folder.classes == ["cat", "frog"]

    shards = tmp_path / "shards"
    cganctl(embedded_env, "results", "download", job_id[:8], "--to", str(shards), check=True)
    import webdataset

    urls = sorted(str(p) for p in shards.glob("shard-*.tar"))
    samples = list(webdataset.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "cls", "json"))
    assert len(samples) == 130 and samples[0][0].size == (32, 32)
    assert {meta["label"] for _, _, meta in samples} == {"cat", "frog"}
    assert all(manifest["classes"][cls] == meta["label"] for _, cls, meta in samples)


def test_same_seed_same_bytes(embedded_env):
    digests = []
    for _ in range(2):
        out = cganctl(embedded_env, "submit", "generate", "--balanced", "--per-class", "3", "--seed", "11", "--json", check=True).stdout
        job = json.loads(out)
        manifest = json.loads((settings_from_env(embedded_env).local_store_dir / "jobs" / job["id"] / "manifest.json").read_text())
        digests.append([f["sha256"] for f in manifest["files"]])
    assert digests[0] == digests[1]


def test_db_upgrade_and_status(embedded_env):
    assert "at revision 0002" in cganctl(embedded_env, "db", "upgrade", check=True).stdout
    status = json.loads(cganctl(embedded_env, "status", "--json", check=True).stdout)
    assert all(part["ok"] for part in status["services"].values()) and status["workers"] is None


def test_jobs_show_unknown_id(embedded_env):
    result = cganctl(embedded_env, "jobs", "show", "deadbeef")
    assert result.returncode == 2 and "no job 'deadbeef'" in result.stderr
    short = cganctl(embedded_env, "jobs", "show", "de")
    assert short.returncode == 2 and short.stderr.strip() == "error: no job 'de' (a prefix needs at least 4 characters)"


def test_download_refuses_a_corrupted_shard(embedded_env, tmp_path):
    job = json.loads(cganctl(embedded_env, "submit", "generate", "--label", "ship", "--count", "20", "--shard-size", "10", "--json", check=True).stdout)
    shard = settings_from_env(embedded_env).local_store_dir / "jobs" / job["id"] / "shards" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = cganctl(embedded_env, "results", "download", job["id"], "--to", str(tmp_path / "out"))
    assert result.returncode == 1 and "shard-000001.tar: sha256" in result.stderr and "does not match the manifest" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # all or nothing: not even the good shard 0, no staging folder
    shard.unlink()  # gone from the store: the same kind of answer, exit 1, nothing written
    gone = cganctl(embedded_env, "results", "download", job["id"], "--to", str(tmp_path / "out"))
    assert gone.returncode == 1 and gone.stderr.strip() == (
        f"error: jobs/{job['id']}/shards/shard-000001.tar: listed in the job's manifest but missing from the store"), gone.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_fill_to_names_the_classes_it_does_not_fill(embedded_env, tmp_path):
    from PIL import Image

    root = tmp_path / "few"
    (root / "frog").mkdir(parents=True)  # an empty class folder: no image, so not a class of the dataset
    for name, n in {"cat": 3, "dog": 4}.items():
        (root / name).mkdir()
        for i in range(n):
            Image.new("RGB", (32, 32), (i, 9, 9)).save(root / name / f"{i}.png")
    result = cganctl(embedded_env, "submit", "generate", "--fill-to", "4", "--dataset", str(root))
    assert result.returncode == 0, result.stderr
    assert "images: 1 in 1 shard: cat 1" in result.stdout
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: not in {root}, so not filled: airplane, automobile, bird, deer, frog, horse, ship, truck "
                       "(a class folder with no image counts as absent; generate those with --label NAME --count N)"], result.stderr


def test_download_puts_one_job_in_one_folder(embedded_env, tmp_path):
    jobs = [json.loads(cganctl(embedded_env, "submit", "generate", "--label", label, "--count", "6", "--json", check=True).stdout) for label in ("ship", "frog")]
    out = tmp_path / "out"
    first = cganctl(embedded_env, "results", "download", jobs[0]["id"], "--to", str(out), "--layout", "imagefolder", check=True)
    assert first.stdout.strip() == f"6 images verified and unpacked to {out}/<class>/<key>.png"
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    for layout in ("imagefolder", "webdataset"):
        second = cganctl(embedded_env, "results", "download", jobs[1]["id"], "--to", str(out), "--layout", layout)
        assert second.returncode == 2 and second.stderr.startswith(f"error: --to {out} is not empty (2 entries, e.g. 'manifest.json')"), second.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before and json.loads((out / "manifest.json").read_text())["job_id"] == jobs[0]["id"]
    (tmp_path / "empty").mkdir()
    cganctl(embedded_env, "results", "download", jobs[1]["id"], "--to", str(tmp_path / "empty"), check=True)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["manifest.json", "shard-000000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty", "out"]  # no staging folder left


def test_two_downloads_into_one_folder_at_once_give_one_whole_download(embedded_env, tmp_path):
    """Each download stages in a folder of its own: the loser of two at once into one --to is refused (exit 2) with
    what happened, never a false integrity error (a shared staging folder was deleted under the other download);
    the winner's files are whole. A file in the way of --to is named as such."""
    import os

    from harness.services import ROOT, cganctl_command

    job = json.loads(cganctl(embedded_env, "submit", "generate", "--label", "ship", "--count", "600", "--shard-size", "50", "--json", check=True).stdout)
    race = tmp_path / "race"
    for layout in ("webdataset", "imagefolder"):
        shutil.rmtree(race, ignore_errors=True)
        args = [*cganctl_command(), "results", "download", job["id"], "--to", str(race), "--layout", layout]
        procs = [subprocess.Popen(args, env=embedded_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        assert sorted(code for code, _ in results) == [0, 2], results
        loser = next(err for code, err in results if code == 2)
        assert loser.startswith((f"error: --to {race} is not empty", f"error: --to {race} was written by someone else")), loser
        check = cganctl(embedded_env, "results", "download", job["id"], "--to", str(tmp_path / "again"), "--layout", layout, check=True)
        mine = sorted(p.relative_to(race).as_posix() for p in race.rglob("*"))
        assert mine == sorted(p.relative_to(tmp_path / "again").as_posix() for p in (tmp_path / "again").rglob("*")), check.stdout
        shutil.rmtree(tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "race"]  # no staging folder left
    umask = os.umask(0)
    os.umask(umask)
    assert race.stat().st_mode & 0o777 == 0o777 & ~umask  # the umask's permissions, not a temporary folder's 0700
    (tmp_path / "afile").write_text("x")
    blocked = cganctl(embedded_env, "results", "download", job["id"], "--to", str(tmp_path / "afile" / "sub"))
    assert blocked.returncode == 2 and blocked.stderr.strip() == f"error: could not write to {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file, not a folder"


def test_min_confidence_keeps_only_confident_samples(embedded_env, tmp_path):
    result = cganctl(embedded_env, "submit", "generate", "--label", "frog", "--label", "ship", "--count", "40",
                     "--min-confidence", "0.3", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    acceptance = job["metrics"]["acceptance"]
    assert set(acceptance) == {"frog", "ship"}
    assert all(0 < a["rate"] <= 1 and a["accepted"] >= 20 for a in acceptance.values())
    dest = tmp_path / "out"
    cganctl(embedded_env, "results", "download", job["id"], "--to", str(dest), "--layout", "imagefolder", check=True)

    import numpy as np
    from PIL import Image

    from cganmodel.classifier import load_classifier, predict_proba
    from cganmodel.pretrained import default_model_files

    weights, meta = default_model_files("default-classifier")
    classifier = load_classifier(weights, json.loads(meta.read_text()))
    classes = json.loads(meta.read_text())["classes"]
    for name in ("frog", "ship"):
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((dest / name).glob("*.png"))])
        assert len(images) == 20
        assert (predict_proba(classifier, images)[:, classes.index(name)] >= 0.3).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "lr_gg=1"], "--set lr_gg: unknown key for preset 'resnet'"),
        (["--set", "lr_g=fast"], "--set lr_g=fast: expected a number (the preset's is 0.0002)"),
        (["--set", "lr_g"], "--set 'lr_g': expected KEY=VALUE"),
        (["--set", "n_dis=1.5"], "--set n_dis=1.5: expected a whole number (the preset's is 2)"),
        (["--name", "Bad Name"], "invalid --name 'Bad Name': a model name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        (["--preset", "mlp", "--set", "n_dis=0"], "invalid training config: n_dis=0 (should be 1 to 100)"),
        (["--preset", "gpt"], "unknown preset 'gpt'"),
        (["--steps", "0"], "invalid training config: steps=0") ,
        (["--steps", "10", "--set", "steps=-5"], "--steps and --set steps=-5 both set steps: give one"),
        (["--set", "lr_g=1e-4", "--set", "lr_g=2e-4"], "--set lr_g=1e-4 and --set lr_g=2e-4: give one"),
        (["--preset", "mlp", "--batch-size", "1"], "--batch-size: batch_size=1 is too small (should be at least 2: BatchNorm needs more than one image a batch)"),
        (["--preset", "classifier", "--batch-size", "2", "ONE-CLASS"], "has 1 class (cat): a classifier needs at least 2 class folders"),
    ],
)
def test_bad_train_recipe_is_one_error_line_and_no_row(embedded_env, tmp_path, args, message):
    data = tiny_image_folder(tmp_path / "data")
    if "ONE-CLASS" in args:  # a dataset of one class folder
        args = [a for a in args if a != "ONE-CLASS"]
        for other in data.iterdir():
            if other.name != "cat":
                shutil.rmtree(other)
    result = cganctl(embedded_env, "submit", "train", "--dataset", str(data), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert _job_rows(embedded_env) == []


def test_embedded_train_on_a_device_this_machine_lacks_is_bad_input(embedded_env, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", str(tiny_image_folder(tmp_path / "data")), "--steps", "2",
                     "--batch-size", "8", "--set", "device=cuda")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --set device=cuda: device 'cuda' requested but CUDA is not available on this machine, which runs the job itself (embedded default)")
    assert _job_rows(embedded_env) == []


def test_a_one_class_model_is_evaluated_by_inception_alone(embedded_env, tmp_path):
    """A GAN of one class folder has no classifier to score it: --no-classifier gives its Inception FID (before,
    no evaluation of it could be submitted)."""
    data = tiny_image_folder(tmp_path / "frogs", classes=("frog",), per_class=8)
    cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "1", "--batch-size", "4",
            "--set", "standing_stats=0", "--name", "solo", "--wait", check=True, timeout=300)
    refused = cganctl(embedded_env, "submit", "evaluate", "--model", "solo", "--reference", str(data), "--samples-per-class", "4")
    assert refused.returncode == 2 and "evaluate it with --no-classifier" in refused.stderr, refused.stderr
    out = cganctl(embedded_env, "submit", "evaluate", "--model", "solo", "--no-classifier", "--reference", str(data),
                  "--samples-per-class", "4", "--wait", "--json", check=True, timeout=300)
    job = json.loads(out.stdout)
    metrics = job["metrics"]
    assert job["status"] == "succeeded" and job["spec"]["classifier"] is None, job
    assert metrics["inception_fid"] > 0 and "label_accuracy" not in metrics and "classifier_fid" not in metrics, metrics
    assert list(metrics["protocol"]["feature_extractors"]) == ["inception"] and metrics["protocol"]["reference_images"] == 8
    shown = cganctl(embedded_env, "jobs", "show", job["id"], check=True).stdout
    assert "Inception FID" in shown and "label accuracy" not in shown, shown


def test_train_shows_and_uses_the_resolved_recipe(embedded_env, tmp_path):
    data = tiny_image_folder(tmp_path / "images")
    (data / "cat" / "notes.txt").write_text("not an image")
    (data / "deer").mkdir()  # a copy that failed: no class of the model, and the user is told
    result = cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "2",
                     "--set", "batch_size=8", "--set", "lr_g=1e-4", "--set", "checkpoint_every=1", "--wait")
    assert result.returncode == 0, result.stderr
    assert f"dataset {data}: 24 images in 3 classes: airplane 8, cat 8, frog 8" in result.stdout, result.stdout
    assert "warning: 1 file is not an image and was not read (.txt 1; images end in .jpg" in result.stderr, result.stderr
    assert "warning: 1 class folder holds no image and is not a class of this dataset: deer\n" in result.stderr, result.stderr
    recipe_line = next(line for line in result.stdout.splitlines() if line.startswith("recipe mlp:"))
    assert "steps=2" in recipe_line and "lr_g=0.0001" in recipe_line and "n_dis=1" in recipe_line and "batch_size=8" in recipe_line
    job = _job_rows(embedded_env)[0]
    assert job.status == "succeeded" and job.spec["recipe"]["lr_g"] == 1e-4
    meta = json.loads((settings_from_env(embedded_env).local_store_dir / "jobs" / job.id / "model" / "model.json").read_text())
    assert meta["train_config"]["lr_g"] == 1e-4 and meta["train_config"]["batch_size"] == 8
    ref = job.metrics["model"]
    assert f"registered as {ref}: use it with --model {ref}" in result.stdout.splitlines(), result.stdout
    # its results: the model (weights + the model.json that loading them needs), loss curve and samples, byte for byte
    out = cganctl(embedded_env, "results", "download", job.id[:8], "--to", str(tmp_path / "model"), check=True).stdout
    assert out.strip() == f"4 files of train job {job.id} saved in {tmp_path / 'model'}: generator.safetensors, loss.png, model.json, samples.png"
    store = settings_from_env(embedded_env).local_store_dir
    assert (tmp_path / "model" / "generator.safetensors").read_bytes() == (store / job.artifacts["model"]).read_bytes()
    assert json.loads((tmp_path / "model" / "model.json").read_text()) == meta
    bad = cganctl(embedded_env, "results", "download", job.id, "--to", str(tmp_path / "x"), "--layout", "imagefolder")
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: --layout imagefolder is for generate jobs, not train jobs (job {job.id})"
    assert not (tmp_path / "x").exists()

    # a classifier says which flag takes it, and its test accuracy where the dataset has a test split
    split = tmp_path / "split"
    tiny_image_folder(split / "train")
    tiny_image_folder(split / "test", per_class=2)
    result = cganctl(embedded_env, "submit", "train", "--preset", "classifier", "--dataset", str(split), "--steps", "2",
                     "--batch-size", "8", "--checkpoint-every", "1", "--name", "tinyclf", "--wait", check=True)
    lines = result.stdout.splitlines()
    assert "registered as tinyclf:1: use it with --classifier tinyclf:1" in lines, result.stdout
    assert any(re.fullmatch(r"test accuracy \d+\.\d% on the dataset's 6 test images", line) for line in lines), result.stdout

    # a test split that lacks a class is scored by class name, not by its own numbering of what it has
    import numpy as np

    from cganmodel.classifier import load_classifier, predict_proba
    from cganmodel.data import load_image_dataset

    shutil.rmtree(split / "test" / "airplane")
    job = cganctl(embedded_env, "submit", "train", "--preset", "classifier", "--dataset", str(split), "--steps", "2",
                  "--batch-size", "8", "--checkpoint-every", "1", "--name", "tinyclf", "--json", "--wait", check=True)
    done = json.loads(job.stdout)
    files = settings_from_env(embedded_env).local_store_dir / done["artifacts"]["model"]
    model = load_classifier(files, json.loads(files.with_name("model.json").read_text()))
    test = load_image_dataset(str(split), "test")
    assert test.classes == ["cat", "frog"]
    truth = np.array([1] * 2 + [2] * 2)  # the model's indices: airplane 0, cat 1, frog 2
    expected = float((predict_proba(model, test.images).argmax(axis=1) == truth).mean())
    assert done["metrics"]["test"]["accuracy"] == pytest.approx(expected) and set(done["metrics"]["test"]["per_class"]) == {"cat", "frog"}
    tiny_image_folder(split / "test", classes=("dog",), per_class=2)
    refused = cganctl(embedded_env, "submit", "train", "--preset", "classifier", "--dataset", str(split), "--steps", "2", "--batch-size", "8")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: --dataset {split}: its test split has classes the train split lacks (dog): the classifier could not score them"), refused.stderr
    # registering it is allowed (a GAN reads the train split only), with the warning a classifier's submit would give
    import tarfile

    with tarfile.open(tmp_path / "split.tar.gz", "w:gz") as tar:
        tar.add(split, arcname="split")
    added = cganctl(embedded_env, "datasets", "add", "splitset", str(tmp_path / "split.tar.gz"))
    assert added.returncode == 0 and added.stderr.strip() == (
        "warning: its test split has classes the train split lacks (dog): `submit train --preset classifier` refuses it"), added.stderr


def test_a_job_failing_in_process_is_one_error_line(embedded_env, tmp_path):
    """An embedded job that fails while it runs (an image that passes the header checks, then does not decode):
    exit 1, the job's error once (not also the executor's log line of it), the row failed."""
    data = tiny_image_folder(tmp_path / "ds")
    broken = data / "cat" / "0.png"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    result = cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", str(data), "--steps", "2",
                     "--batch-size", "8", "--checkpoint-every", "1", "--wait")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "truncated" in line]
    assert errors == ["error: cannot decode image 'cat/0.png' (image file is truncated)"], result.stderr
    assert "Traceback" not in result.stderr and "worker.execute" not in result.stderr
    assert [j.status for j in _job_rows(embedded_env)] == ["failed"]


def test_results_download_path_imports_no_torch():
    code = (
        "import sys\n"
        "import scheduler.results, scheduler.manifest, cganmodel.shards, cganmodel.seeding, cganmodel.presets\n"
        "print('HEAVY', sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_models_list_shows_every_shipped_version_whole_in_80_columns(embedded_env):
    from scheduler.model_registry import BUILTIN_FILES

    shown = cganctl(dict(embedded_env, COLUMNS="80"), "models", "list", check=True).stdout
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80
    flat = "".join(ch for line in shown.splitlines() for ch in line if ch not in "│ ")
    newest = len(BUILTIN_FILES["default"])
    for version, stem in enumerate(BUILTIN_FILES["default"], start=1):
        named = f"default:{version}" + ("=default" if version == newest else "")  # what plain `default` resolves to
        assert f"{named}generatorresnet10builtin:{stem}.safetensors" in flat, stem
    listed = json.loads(cganctl(embedded_env, "models", "list", "--json", check=True).stdout)
    assert [m["ref"] for m in listed] == [f"default:{v}" for v in range(1, len(BUILTIN_FILES["default"]) + 1)] + ["default-classifier:1"]


@pytest.mark.parametrize("args", [["submit", "generate", "--count", "3", "--label"], ["jobs", "show"], ["jobs", "list", "--status"]])
def test_a_100kb_argument_is_refused_at_once_in_one_bounded_line(embedded_env, args):
    """The error echoes a 100,000-character value clipped, and the secret scrubbing that reads it is linear."""
    import time

    started = time.monotonic()
    result = cganctl(embedded_env, *args, "a" * 100_000, timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 2 and result.stderr.startswith("error:") and len(result.stderr.splitlines()) == 1, result.stderr[:300]
    assert len(result.stderr) < 1200 and "characters left out" in result.stderr, len(result.stderr)
    assert took < 20, took


def test_ctrl_c_on_jobs_watch_stops_following_and_on_the_submitter_cancels(embedded_env):
    """On the embedded default the submitting process runs the job: Ctrl-C there cancels it. ``jobs watch`` in
    another process only follows it: Ctrl-C there stops following and the job goes on."""
    import signal
    import time

    from harness.services import cganctl_command

    submitter = subprocess.Popen(
        [*cganctl_command(), "submit", "generate", "--label", "ship", "--count", "50000", "--json"],
        env=embedded_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        job = None
        while time.monotonic() < deadline:  # the row exists once the submit has written it; then wait for progress
            rows = json.loads(cganctl(embedded_env, "jobs", "list", "--json", check=True).stdout)
            job = rows[0] if rows else None
            if job and job["status"] == "running" and job["progress_done"]:
                break
            time.sleep(0.5)
        assert job and job["status"] == "running", job
        watcher = subprocess.Popen([*cganctl_command(), "jobs", "watch", job["id"]], env=embedded_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 130 and f"stopped following; job {job['id']} goes on" in err, err
        time.sleep(1.5)
        after = json.loads(cganctl(embedded_env, "jobs", "show", job["id"], "--json", check=True).stdout)
        assert after["status"] == "running" and not after.get("cancel_requested"), after
        submitter.send_signal(signal.SIGINT)
        _, err = submitter.communicate(timeout=120)
        assert submitter.returncode == 130 and f"interrupted: cancelling job {job['id']}" in err, err
        assert json.loads(cganctl(embedded_env, "jobs", "show", job["id"], "--json", check=True).stdout)["status"] == "cancelled"
    finally:
        if submitter.poll() is None:
            submitter.kill()
            submitter.communicate()


def test_output_cut_short_by_its_reader_exits_141_not_job_failed(embedded_env):
    """`cganctl submit ... | head -1`: the job succeeds, then stdout is gone. Exit 141 (as a shell reports SIGPIPE),
    not 1, which means "job failed"."""
    from harness.services import cganctl_command

    proc = subprocess.Popen([*cganctl_command(), "submit", "generate", "--label", "cat", "--count", "10"], env=embedded_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141 and first.startswith("job ") and "error" not in err and "Traceback" not in err, err
    job = json.loads(cganctl(embedded_env, "jobs", "list", "--json", check=True).stdout)[0]
    assert job["status"] == "succeeded"


def test_version_is_the_installed_package_version(embedded_env):
    import tomllib

    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = cganctl(embedded_env, "--version", check=True)
    assert result.stdout == f"cganctl {expected}\n" and result.stderr == ""
