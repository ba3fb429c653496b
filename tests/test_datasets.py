"""Datasets in the project's object store (issue 8): registered names and s3:// URIs in the project's bucket.

Embedded default (local store) and a fleet on the real services (SeaweedFS S3, PostgreSQL, Redis, a worker).
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from harness.datasets import tiny_image_folder
from harness.services import cganctl, settings_from_env, wait_for


def _archive(tmp_path: Path, name: str = "tiny.tar.gz", with_test: bool = True, per_class: int = 6, second: str = "test") -> Path:
    tree = tmp_path / f"tree-{name}"
    tiny_image_folder(tree / "train", per_class=per_class)
    if with_test:
        tiny_image_folder(tree / second, per_class=3)
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname=".")
    return path


@pytest.mark.parametrize("mode, suffix", [("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")])
def test_every_archive_a_dataset_may_be_registers(embedded_env, tmp_path, mode, suffix):
    """`--dataset x.tar.xz` trains; `datasets add` takes the same archives (it refused .tar.bz2 and .tar.xz)."""
    tree = tmp_path / "tree"
    tiny_image_folder(tree / "train", per_class=4)
    (tree / "train" / "deer").mkdir()  # a class folder without an image: named, not a class
    (tree / "train" / "cat" / "passwd.png").symlink_to("/etc/passwd")  # a link member: not followed, said so
    path = tmp_path / f"tiny{suffix}"
    with tarfile.open(path, mode) as tar:
        tar.add(tree, arcname=".")
    added = json.loads(cganctl(embedded_env, "datasets", "add", "tiny", str(path), "--json", check=True).stdout)
    assert added["key"].endswith(suffix) and added["splits"]["train"] == {"airplane": 4, "cat": 4, "frog": 4}
    assert added["warnings"] == ["1 class folder holds no image and is not a class of this dataset: deer",
                                 "1 archive member is a link and was not read (links in an archive are never followed: pack the files themselves, tar -h)"]
    trained = cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", "tiny", "--steps", "1", "--batch-size", "4",
                      "--set", "standing_stats=0", "--wait", timeout=300)
    assert trained.returncode == 0, trained.stderr


def _one_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_register_list_and_train_by_name_embedded(embedded_env, tmp_path):
    archive = _archive(tmp_path)
    added = json.loads(cganctl(embedded_env, "datasets", "add", "tiny", str(archive), "--json", check=True).stdout)
    assert added["classes"] == ["airplane", "cat", "frog"] and added["images"] == {"train": 18, "test": 9}
    assert added["key"].startswith("datasets/tiny/") and added["key"].endswith(".tar.gz")
    listed = json.loads(cganctl(embedded_env, "datasets", "list", "--json", check=True).stdout)
    assert [d["name"] for d in listed] == ["tiny"]

    result = cganctl(embedded_env, "submit", "train", "--preset", "classifier", "--dataset", "tiny", "--steps", "2", "--batch-size", "8", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["spec"]["dataset"] == "store:" + added["key"] and job["status"] == "succeeded"
    assert "test" in job["metrics"]  # the test split was read from the stored archive too

    # registering the name again points new jobs at the new archive; the old spec keeps its object
    v2 = _archive(tmp_path, "v2.tar", with_test=False, per_class=9)
    again = json.loads(cganctl(embedded_env, "datasets", "add", "tiny", str(v2), "--json", check=True).stdout)
    assert again["key"] != added["key"] and again["images"] == {"train": 27} and again["replaced"] == added["key"]
    # the same archive once more: nothing is replaced; a new archive is named with what it replaces
    assert "replaces" not in cganctl(embedded_env, "datasets", "add", "tiny", str(v2), check=True).stdout
    line = cganctl(embedded_env, "datasets", "add", "tiny", str(archive), check=True).stdout.splitlines()[-1]
    assert line.startswith("replaces tiny added ") and f"from v2.tar ({again['key']}); jobs already submitted keep reading that one" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (("datasets", "add", "Bad Name", "ARCHIVE"), "invalid dataset name"),
        (("datasets", "add", "cifar10", "ARCHIVE"), "dataset name 'cifar10' is taken by the built-in dataset"),
        (("datasets", "add", "tiny", "s3://bucket/x.tar"), "datasets add reads a local archive, not s3://bucket/x.tar"),  # was: s3:/bucket/x.tar does not exist
        (("datasets", "add", "tiny", "FILE"), "is not a folder or a .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz file"),
        (("datasets", "add", "tiny", "EMPTY"), "no image files found"),
        (("datasets", "add", "tiny", "x" * 300 + ".tar.gz"), "cannot be read: File name too long"),
        (("submit", "train", "--preset", "mlp", "--dataset", "nosuchname", "--steps", "2"), "does not exist"),
        (("submit", "train", "--preset", "mlp", "--dataset", "s3://b/x.tar", "--steps", "2"), "need the project's bucket"),
        (("submit", "train", "--preset", "mlp", "--dataset", "ARCHIVE", "--steps", "2"), "fewer than the batch size 64"),
    ],
)
def test_bad_dataset_input_is_one_line_and_no_row(embedded_env, tmp_path, args, message):
    archive = _archive(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    named = {"ARCHIVE": archive, "FILE": tmp_path / "notes.txt", "EMPTY": tmp_path / "empty"}
    args = tuple(str(named.get(a, a)) for a in args)
    assert message in _one_error(cganctl(embedded_env, *args))
    assert json.loads(cganctl(embedded_env, "jobs", "list", "--json", check=True).stdout) == []
    assert json.loads(cganctl(embedded_env, "datasets", "list", "--json", check=True).stdout) == []
    objects = Path(embedded_env["CGAN_DATA_DIR"]) / "objects"
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))  # nothing uploaded


def test_a_folder_is_added_as_one_reproducible_archive(embedded_env, tmp_path):
    """`datasets add NAME FOLDER` packs the folder (hidden files left out, links kept as links and not followed)
    into a .tar.gz that depends on the files alone: the same folder added twice, or a copy of it with other
    times, is one stored object; a changed file is a new one. What it holds is what the folder holds."""
    import os
    import shutil

    tree = tiny_image_folder(tmp_path / "birds" / "train", per_class=5).parent
    tiny_image_folder(tree / "test", per_class=2)
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref")
    (tree / "train" / "cat" / "passwd.png").symlink_to("/etc/passwd")
    added = json.loads(cganctl(embedded_env, "datasets", "add", "birds", str(tree), "--json", check=True).stdout)
    assert added["splits"] == {"train": {"airplane": 5, "cat": 5, "frog": 5}, "test": {"airplane": 2, "cat": 2, "frog": 2}}
    assert added["source"] == "birds/" and added["key"].endswith(".tar.gz")
    assert added["warnings"] == ["1 archive member is a link and was not read (links in an archive are never followed: pack the files themselves, tar -h)"]
    stored = Path(embedded_env["CGAN_DATA_DIR"]) / "objects" / added["key"]
    with tarfile.open(stored) as tar:
        names = tar.getnames()
        assert not any("/." in n for n in names) and tar.getmember("birds/train/cat/passwd.png").issym()
        assert {(m.uid, m.gid, m.mtime, m.uname) for m in tar.getmembers()} == {(0, 0, 0, "")}
    copy = tmp_path / "copy" / "birds"
    shutil.copytree(tree, copy, symlinks=True)
    os.utime(copy / "train" / "cat" / "0.png", (1, 1))
    (copy / "train" / "cat" / "1.png").chmod(0o600)  # another time and mode: the same data
    again = json.loads(cganctl(embedded_env, "datasets", "add", "birds", str(copy), "--json", check=True).stdout)
    assert again["key"] == added["key"] and again["replaced"] is None
    (copy / "train" / "cat" / "0.png").write_bytes((tree / "train" / "frog" / "0.png").read_bytes())
    assert json.loads(cganctl(embedded_env, "datasets", "add", "birds", str(copy), "--json", check=True).stdout)["key"] != added["key"]
    trained = cganctl(embedded_env, "submit", "train", "--preset", "classifier", "--dataset", "birds", "--steps", "1", "--batch-size", "4", "--wait", "--json", timeout=300)
    assert trained.returncode == 0 and json.loads(trained.stdout)["status"] == "succeeded", trained.stderr
    big = dict(embedded_env, CGAN_MAX_DATASET_BYTES="1000")
    refused = cganctl(big, "datasets", "add", "big", str(tree))
    assert refused.returncode == 2 and refused.stderr.strip() == f"error: {tree} holds more than 1000 bytes of files (CGAN_MAX_DATASET_BYTES)", refused.stderr


def test_name_that_is_also_a_path_is_refused_as_ambiguous(embedded_env, tmp_path):
    import subprocess

    from harness.services import cganctl_command

    cganctl(embedded_env, "datasets", "add", "tiny", str(_archive(tmp_path)), check=True)
    tiny_image_folder(tmp_path / "work" / "tiny", classes=("zebra",), per_class=2)
    run = lambda source: subprocess.run([*cganctl_command(), "submit", "generate", "--fill-to", "80", "--dataset", source],  # noqa: E731
                                        cwd=tmp_path / "work", env=embedded_env, capture_output=True, text=True, timeout=120)
    assert "both a registered dataset and a path here: write ./tiny" in _one_error(run("tiny"))
    from scheduler.model_registry import builtin_model

    assert f"classes unknown to model {builtin_model('default').ref}: zebra" in _one_error(run("./tiny"))  # the folder was read, not the archive


def test_stored_archive_is_checked_against_its_key(embedded_env, tmp_path):
    from scheduler import datasets
    from scheduler.errors import InvalidInput
    from scheduler.store import open_store

    added = json.loads(cganctl(embedded_env, "datasets", "add", "tiny", str(_archive(tmp_path)), "--json", check=True).stdout)
    settings = settings_from_env(embedded_env)
    store = open_store(settings)
    store.put_bytes(added["key"], _archive(tmp_path, "forged.tar.gz", per_class=7).read_bytes())  # replaced behind the index
    with pytest.raises(InvalidInput, match="does not match the sha256 in its key"):
        datasets.local_copy("store:" + added["key"], settings, store)
    assert not list((settings.data_dir / "cache" / "datasets").glob("*.tar.gz"))  # nothing half-written stays


def test_fleet_s3_uri_and_registered_name(fleet_env, table, start_worker, tmp_path):
    from scheduler.store import open_store

    settings = settings_from_env(fleet_env)
    store = open_store(settings)
    archive = _archive(tmp_path, per_class=12)
    store.put_file("incoming/tiny.tar.gz", archive)
    bucket = settings.s3_bucket

    # s3:// in the project's bucket: counted at submit from a local copy, kept as one fixed object in the spec
    result = cganctl(fleet_env, "submit", "generate", "--fill-to", "20", "--dataset", f"s3://{bucket}/incoming/tiny.tar.gz", "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    counts = job["spec"]["counts"]
    assert counts == {"airplane": 8, "cat": 8, "frog": 8}  # the dataset's own classes, topped up to 20
    assert job["spec"]["request"]["dataset"] == "store:incoming/tiny.tar.gz"
    for uri, message in [
        ("s3://other-bucket/incoming/tiny.tar.gz", f"only objects in the project's bucket s3://{bucket}"),
        (f"s3://{bucket}/incoming/missing.tar.gz", "does not exist"),
        (f"s3://{bucket}/incoming/tiny.zip", "expected a .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz archive"),
    ]:
        assert message in _one_error(cganctl(fleet_env, "submit", "generate", "--fill-to", "20", "--dataset", uri))

    # a registered name, trained on by a real worker that reads it from S3
    cganctl(fleet_env, "datasets", "add", "tiny-fleet", str(archive), check=True)
    result = cganctl(fleet_env, "submit", "train", "--preset", "classifier", "--dataset", "tiny-fleet", "--steps", "2", "--batch-size", "8", "--queue", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    train = json.loads(result.stdout)
    start_worker(queues="cpu")
    wait_for(lambda: table.get(train["id"]).finished, timeout=240, what="the train job on the registered dataset")
    done = table.get(train["id"])
    assert done.status == "succeeded", done.error
    assert done.spec["dataset"].startswith("store:datasets/tiny-fleet/") and "test" in done.metrics


def test_corrupt_index_is_one_error_line(embedded_env, tmp_path):
    from scheduler.store import open_store

    cganctl(embedded_env, "datasets", "add", "tiny", str(_archive(tmp_path)), check=True)
    open_store(settings_from_env(embedded_env)).put_bytes("datasets/tiny.json", b"{not json")
    message = _one_error(cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", "tiny", "--steps", "2"))
    assert "the index of dataset tiny (datasets/tiny.json) is unreadable" in message
    # what the message says to do works: adding it again writes a good index
    cganctl(embedded_env, "datasets", "add", "tiny", str(_archive(tmp_path, "again.tar.gz")), check=True)
    assert cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", "tiny", "--steps", "2", "--batch-size", "8").returncode == 0


@pytest.mark.parametrize("bad", ["text", "too-wide", "truncated"])
def test_registration_refuses_an_image_that_no_job_could_read(embedded_env, tmp_path, bad):
    """A '.jpg' that is no image, a PNG wider than CGAN_MAX_IMAGE_SIDE (from its header, before a pixel is
    decoded) or a PNG cut short (it does not decode) is refused at `datasets add`: one error line naming
    the file, nothing registered."""
    from PIL import Image

    tree = tmp_path / "tree"
    tiny_image_folder(tree / "train", per_class=4)
    target = tree / "train" / "cat" / {"text": "a.jpg", "too-wide": "wide.png", "truncated": "cut.png"}[bad]
    if bad == "text":
        target.write_text("hello")
    elif bad == "too-wide":
        Image.new("RGB", (9000, 10)).save(target)
    else:
        Image.effect_noise((64, 64), 80).convert("RGB").save(target)
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=".")
    line = _one_error(cganctl(embedded_env, "datasets", "add", "bad", str(archive)))
    expected = {"text": "is not an image that can be read", "too-wide": "above the 8192-pixel side limit (CGAN_MAX_IMAGE_SIDE)",
                "truncated": "cannot decode image"}[bad]
    assert target.name in line and expected in line and "BytesIO" not in line, line
    assert cganctl(embedded_env, "datasets", "list", "--json", check=True).stdout.strip() == "[]"


def test_a_dataset_cache_that_cannot_be_written_names_the_folder(tmp_path):
    from scheduler import datasets
    from scheduler.errors import CganError
    from scheduler.settings import Settings
    from scheduler.store import LocalStore

    settings = Settings(data_dir=tmp_path / "data")
    store = LocalStore(tmp_path / "objects")
    entry = datasets.add(store, settings, "tiny", _archive(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cache").write_text("a file where the cache folder goes")  # as a full or read-only disk would refuse
    with pytest.raises(CganError, match=r"cannot copy it \(\d+ bytes\) into this worker's dataset cache .*/cache/datasets \(CGAN_DATA_DIR\): Not a directory"):
        datasets.local_copy(entry.ref, settings, store)


def test_messages_name_a_registered_dataset_by_its_name(embedded_env, tmp_path):
    """Not by the store key it resolves to (store:datasets/NAME/<sha256>.tar.gz), which the user never typed."""
    cganctl(embedded_env, "datasets", "add", "notest", str(_archive(tmp_path, with_test=False)), check=True)
    cganctl(embedded_env, "datasets", "add", "three", str(_archive(tmp_path, "three.tar.gz")), check=True)
    no_split = _one_error(cganctl(embedded_env, "submit", "evaluate", "--reference", "notest", "--downstream", "--no-inception"))
    assert no_split.startswith("error: reference notest has classes airplane, cat, frog; model default:")  # classes first
    trained = cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", "notest", "--steps", "1", "--batch-size", "4",
                      "--set", "standing_stats=0", "--name", "tri", "--wait", timeout=300)
    assert trained.returncode == 0, trained.stderr
    clf = cganctl(embedded_env, "submit", "train", "--preset", "classifier", "--dataset", "three", "--steps", "1", "--batch-size", "4",
                  "--name", "triclf", "--wait", timeout=300)
    assert clf.returncode == 0, clf.stderr
    line = _one_error(cganctl(embedded_env, "submit", "evaluate", "--model", "tri", "--classifier", "triclf", "--reference", "notest",
                              "--downstream", "--no-inception"))
    assert line == "error: --downstream needs a reference with a test split: notest has no 'test' split; found ['train']", line


def test_a_val_split_is_listed_and_the_test_split_hint_names_it(embedded_env, tmp_path):
    archive = _archive(tmp_path, "tv.tar.gz", per_class=4, second="val")
    added = cganctl(embedded_env, "datasets", "add", "tv", str(archive), check=True).stdout
    assert "train 12 images, val 9 images" in added, added  # listed, not silently left out
    from harness.services import settings_from_env
    from scheduler.dataset_access import resolve
    from scheduler.errors import InvalidInput
    from scheduler.submission import _check_test_split

    settings = settings_from_env(embedded_env)
    with pytest.raises(InvalidInput) as refused:
        _check_test_split(resolve("tv", settings, flag="--reference"), ["airplane", "cat", "frog"], settings, shown="tv")
    assert str(refused.value) == ("--downstream needs a reference with a test split: tv has no 'test' split; found ['train', 'val'] "
                                  "(a val/ split is not read as the test split: rename it test/)")
