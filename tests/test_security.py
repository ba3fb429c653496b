"""Issue 8: hostile and careless input. Secrets never shown; output is plain text; budgets; data roots;
everything validated at submit; first use concurrency-safe. Tiny made-up data, real services."""
from __future__ import annotations

import json

import pytest

from harness.services import cganctl
from scheduler.redact import Scrubber, redact_url

PLANTED = ["S3CRET/pw#x?y@z", "QUERYSECRET", "REDISSECRET", "ENDPOINTSECRET", "ACCESSKEYSECRET", "SECRETKEYSECRET", "ENDPOINTUSER"]


@pytest.mark.parametrize(
    "url, hidden",
    [
        ("postgresql+psycopg://u:SECRET/PW@127.0.0.1:1/x", "SECRET"),
        ("postgresql://u:p#a?s@word@h:5432/db", "p#a?s@word"),
        ("postgresql://u@h/db?password=QSECRET&sslmode=disable", "QSECRET"),
        ("redis://:RSECRET@h:6379/0", "RSECRET"),
        ("redis://h:6379/0?token=TSECRET", "TSECRET"),
        ("http://AKID123:SK456@127.0.0.1:8333", "SK456"),
        ("http://AKID123:SK456@127.0.0.1:8333", "AKID123"),
    ],
)
def test_redact_url_hides_any_password(url, hidden):
    shown = redact_url(url)
    assert hidden not in shown and "***" in shown


def test_redact_url_keeps_plain_urls():
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("sqlite:////tmp/x/cganctl.db") == "sqlite:////tmp/x/cganctl.db"


def test_scrubber_removes_echoed_secrets():
    url = "postgresql+psycopg://u:SECRET/PW@127.0.0.1:1/x"
    scrub = Scrubber(urls=[url], secrets=["KEYVALUE"])
    text = scrub(f"could not parse {url}; password SECRET/PW; key KEYVALUE; other redis://:zz9zz@h/0")
    assert "SECRET/PW" not in text and "KEYVALUE" not in text and "zz9zz" not in text


def _planted_env(env: dict[str, str]) -> dict[str, str]:
    env = dict(env)
    env.update(
        CGAN_DATABASE_URL="postgresql+psycopg://u:S3CRET/pw#x?y@z@127.0.0.1:1/x?password=QUERYSECRET",
        CGAN_BROKER_URL="redis://:REDISSECRET@127.0.0.1:1/0",
        CGAN_S3_ENDPOINT_URL="http://ENDPOINTUSER:ENDPOINTSECRET@127.0.0.1:1",
        CGAN_S3_BUCKET="b",
        CGAN_S3_ACCESS_KEY_ID="ACCESSKEYSECRET",
        CGAN_S3_SECRET_ACCESS_KEY="SECRETKEYSECRET",
    )
    return env


def _assert_clean(result, what: str) -> None:
    out = result.stdout + result.stderr
    assert "Traceback" not in out, f"{what}: {out}"
    for secret in PLANTED:
        assert secret not in out, f"{what} shows {secret!r}: {out}"


def test_no_output_path_shows_a_planted_secret(embedded_env):
    env = _planted_env(embedded_env)
    for args in (["status"], ["status", "--json"], ["submit", "generate", "--label", "frog", "--count", "10"],
                 ["jobs", "show", "0123456789abcdef"], ["jobs", "list"], ["db", "upgrade"]):
        result = cganctl(env, *args, timeout=120)
        assert result.returncode != 0, args
        _assert_clean(result, " ".join(args))
    status = json.loads(cganctl(env, "status", "--json", timeout=120).stdout)
    assert not status["services"]["database"]["ok"]


def test_worker_log_and_job_errors_show_no_secret(fleet_env, start_worker, tmp_path):
    """A real fleet whose database URL carries a password query parameter and whose S3 keys are planted:
    the worker log, `status`, a failing job's `jobs show` never show them."""
    env = dict(fleet_env)
    env["CGAN_DATABASE_URL"] = fleet_env["CGAN_DATABASE_URL"] + "?password=QUERYSECRET"
    env["CGAN_S3_SECRET_ACCESS_KEY"] = fleet_env["CGAN_S3_SECRET_ACCESS_KEY"]
    cganctl(env, "db", "upgrade", check=True)
    missing = tmp_path / "data" / "datasets" / "gone"  # under the fleet's dataset root; removed after the submit
    (missing / "cat").mkdir(parents=True)
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(missing / "cat" / name)
    out = cganctl(env, "submit", "train", "--preset", "mlp", "--dataset", str(missing), "--steps", "2", "--batch-size", "2",
                  "--checkpoint-every", "2", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["id"]
    import shutil

    shutil.rmtree(missing)  # the job fails on the worker
    worker = start_worker("sec", env=env)
    waited = cganctl(env, "jobs", "watch", job_id, timeout=300)
    _assert_clean(waited, "jobs watch")
    for args in (["jobs", "show", job_id], ["jobs", "show", job_id, "--json"], ["status"], ["status", "--json"]):
        result = cganctl(env, *args, timeout=120)
        _assert_clean(result, " ".join(args))
        assert "QUERYSECRET" not in result.stdout and fleet_env["CGAN_S3_SECRET_ACCESS_KEY"] not in result.stdout
    worker.stop()
    log = worker.log.read_text(errors="replace")
    assert "QUERYSECRET" not in log and fleet_env["CGAN_S3_SECRET_ACCESS_KEY"] not in log


# --- output safety ---------------------------------------------------------------------------------


def _runtime(env):
    from harness.services import settings_from_env
    from scheduler.runtime import Runtime

    return Runtime(settings_from_env(env))


HOSTILE = "bad file [/x] [red]x[/red] \x1b[2J\x1b]0;title\x07 \x9b31m end"


def test_plain_and_markup_safe():
    from scheduler.textsafe import markup_safe, plain

    assert "\x1b" not in plain(HOSTILE) and "\x07" not in plain(HOSTILE) and "\x9b" not in plain(HOSTILE)
    assert "[/x]" in plain(HOSTILE)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(markup_safe(HOSTILE))
    assert "[/x]" in console.export_text()


def test_jobs_show_prints_hostile_error_and_class_names_as_plain_text(embedded_env):
    from scheduler.specs import EvaluateSpec

    runtime = _runtime(embedded_env)
    spec = EvaluateSpec(model="default:1", classifier="default-classifier:1", samples_per_class=2)
    job = runtime.table.create(spec, queue="gpu", priority=0, max_attempts=1, progress_total=None, progress_unit="images")
    runtime.table.claim(job.id, "w")
    runtime.table.succeed(job.id, metrics={"fid": 1.0, "per_class": {HOSTILE: {"fid": 2.0}, "[/x]": {"fid": 3.0}}}, artifacts={"grid": "k"})
    failed = runtime.table.create(spec, queue="gpu", priority=0, max_attempts=1, progress_total=None, progress_unit="images")
    runtime.table.fail(failed.id, HOSTILE)
    for job_id in (job.id, failed.id):
        result = cganctl(embedded_env, "jobs", "show", job_id, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "[/x]" in result.stdout
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\x9b" not in result.stdout
        assert "Traceback" not in result.stderr
    listed = cganctl(embedded_env, "jobs", "list", timeout=120)
    assert listed.returncode == 0 and "\x1b" not in listed.stdout


def test_results_download_refuses_links_and_empty_destination(embedded_env, tmp_path):
    out = cganctl(embedded_env, "submit", "generate", "--label", "frog", "--count", "4", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["id"]
    empty = cganctl(embedded_env, "results", "download", job_id, "--to", "", timeout=120)
    assert empty.returncode == 2 and empty.stderr.startswith("error:") and "Traceback" not in empty.stderr
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "frog").symlink_to(victim)
    (dest / "manifest.json").symlink_to(victim / "manifest.json")
    for layout in ("webdataset", "imagefolder"):
        result = cganctl(embedded_env, "results", "download", job_id, "--to", str(dest), "--layout", layout, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error:") and "symbolic link" in result.stderr
        assert list(victim.iterdir()) == []
    linked = tmp_path / "linked"
    linked.symlink_to(victim)
    result = cganctl(embedded_env, "results", "download", job_id, "--to", str(linked), timeout=120)
    assert result.returncode == 2 and list(victim.iterdir()) == []
    assert f"give the folder itself, e.g. --to {victim}" in result.stderr, result.stderr
    unwritable = cganctl(embedded_env, "results", "download", job_id, "--to", "/proc/nope", timeout=120)
    assert unwritable.returncode == 2 and unwritable.stderr.startswith("error: could not write to /proc/nope"), unwritable.stderr
    fine = cganctl(embedded_env, "results", "download", job_id, "--to", str(tmp_path / "ok"), "--layout", "imagefolder", timeout=120)
    assert fine.returncode == 0, fine.stderr
    assert len(list((tmp_path / "ok" / "frog").iterdir())) == 4


# --- budgets, data roots, submit-time validation -----------------------------------------------------


def _png(path, size=(8, 8)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)


def test_archive_member_size_is_checked_before_reading(tmp_path):
    import io
    import tarfile

    from cganmodel.dataset_index import DataError, count_images
    from cganmodel.limits import DataLimits

    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("ds/cat/big.png")
        info.size = 2_000_000
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(DataError, match="CGAN_MAX_ARCHIVE_MEMBER_BYTES"):
        count_images(str(archive), limits=DataLimits(member_bytes=1_000_000))
    # a member that is no image is not read, but a compressed stream is decompressed to get past it: bounded too
    with tarfile.open(archive, "w:gz") as tf:
        for name in ("ds/cat/zeros.txt", "ds/cat/a.png"):
            info = tarfile.TarInfo(name)
            info.size = 2_000_000
            tf.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(DataError, match=r"its members add up to more than 3000000 bytes unpacked \(CGAN_MAX_DATASET_BYTES\)"):
        count_images(str(archive), limits=DataLimits(archive_bytes=3_000_000))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_dimensions_are_checked_from_the_header(tmp_path, fmt):
    from PIL import Image

    from cganmodel.data import load_image_dataset
    from cganmodel.dataset_index import DataError
    from cganmodel.limits import DataLimits

    (tmp_path / "ds" / "cat").mkdir(parents=True)
    Image.new("RGB", (300, 200)).save(tmp_path / "ds" / "cat" / f"a.{fmt.lower()}", fmt)
    with pytest.raises(DataError, match="CGAN_MAX_IMAGE_PIXELS"):
        load_image_dataset(str(tmp_path / "ds"), limits=DataLimits(image_pixels=100 * 100))
    with pytest.raises(DataError, match="CGAN_MAX_IMAGE_SIDE"):
        load_image_dataset(str(tmp_path / "ds"), limits=DataLimits(image_side=250))
    with pytest.raises(DataError, match="CGAN_MAX_TOTAL_PIXELS"):
        load_image_dataset(str(tmp_path / "ds"), limits=DataLimits(total_pixels=1000))
    assert len(load_image_dataset(str(tmp_path / "ds"))) == 1


def test_an_image_past_pils_own_bomb_check_is_refused_in_our_words(tmp_path):
    """PIL refuses, on open, an image of more than twice its cap (set to CGAN_MAX_IMAGE_PIXELS): the refusal names
    the setting and the size like every other budget, not PIL's "could be decompression bomb DOS attack"."""
    from PIL import Image

    from cganmodel.data import load_image_dataset
    from cganmodel.dataset_index import DataError

    (tmp_path / "ds" / "cat").mkdir(parents=True)
    Image.new("1", (6000, 6000)).save(tmp_path / "ds" / "cat" / "bomb.png")  # 36 M pixels, 4.4 kB as a PNG
    with pytest.raises(DataError, match=r"image 'cat/bomb.png' declares 36000000 pixels: above the 16777216-pixel limit \(CGAN_MAX_IMAGE_PIXELS\)"):
        load_image_dataset(str(tmp_path / "ds"))


def test_walk_survives_link_loops_and_does_not_follow_links_out(tmp_path):
    import tarfile

    from cganmodel.dataset_index import DataError, count_images
    from cganmodel.limits import DataLimits

    root = tmp_path / "loop" / "root"
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(root / cls / f"{i}.png")
    (root / "cat" / "up").symlink_to("..")  # a loop
    (root / "cat" / "dogs.png").symlink_to(root / "dog" / "0.png")  # would count a dog as a cat
    outside = tmp_path / "outside"
    for i in range(5):
        _png(outside / f"{i}.png")
    (root / "bird").symlink_to(outside)  # a link out of the root
    (root / "alias").symlink_to(root / "cat")  # sorted before "cat": it would have taken the class's name
    assert count_images(str(root)) == {"cat": 3, "dog": 3}
    archive = tmp_path / "loop.tar"
    with tarfile.open(archive, "w") as tar:  # links stay links in an archive: the same classes and counts
        tar.add(root, arcname="root")
    assert count_images(str(archive)) == {"cat": 3, "dog": 3}
    for i in range(2):
        _png(root / ".store" / "horse" / f"{i}.png")
    (root / "horse").symlink_to(root / ".store" / "horse")  # a link inside the root to a folder the walk skips
    assert count_images(str(root)) == {"cat": 3, "dog": 3, "horse": 2}
    with pytest.raises(DataError, match="CGAN_MAX_DATASET_ENTRIES"):
        count_images(str(root), limits=DataLimits(entries=4))


def test_dataset_roots_on_a_fleet_and_embedded(tmp_path):
    import os

    from scheduler.dataset_access import DatasetRefused, resolve_source
    from scheduler.settings import Settings

    data = tmp_path / "data"
    inside = data / "datasets" / "ds"
    _png(inside / "cat" / "a.png")
    outside = tmp_path / "elsewhere"
    _png(outside / "cat" / "a.png")
    fleet = Settings(data_dir=data, broker_url="redis://127.0.0.1:1/0")
    embedded = Settings(data_dir=data)
    assert resolve_source(str(inside), fleet.allowed_dataset_roots) == str(inside)
    assert resolve_source("cifar10", fleet.allowed_dataset_roots) == "cifar10"
    # a folder: the hint registers it (datasets add takes folders too)
    with pytest.raises(DatasetRefused, match=r"outside the dataset roots.*register it in the store with 'cganctl datasets add NAME .*elsewhere'"):
        resolve_source(str(outside), fleet.allowed_dataset_roots)
    (inside.parent / "sneaky").symlink_to(outside)
    with pytest.raises(DatasetRefused, match="outside the dataset roots"):
        resolve_source(str(inside.parent / "sneaky"), fleet.allowed_dataset_roots)
    with pytest.raises(DatasetRefused, match="only cifar10, registered names, s3:// URIs"):
        resolve_source("store:datasets/x.tar", fleet.allowed_dataset_roots)  # the spec's form, never a user's
    with pytest.raises(DatasetRefused, match="empty"):
        resolve_source("", None)
    assert resolve_source(str(outside), embedded.allowed_dataset_roots) == str(outside)
    pipe = tmp_path / "pipe.tar"
    os.mkfifo(pipe)
    with pytest.raises(DatasetRefused, match="neither a folder nor a regular file"):
        resolve_source(str(pipe), None)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert resolve_source("elsewhere", None) == str(outside)  # relative: absolute in the spec
    finally:
        os.chdir(cwd)
    rooted = Settings(data_dir=data, dataset_roots=[str(tmp_path / "elsewhere")])
    with pytest.raises(DatasetRefused):
        resolve_source(str(inside), rooted.allowed_dataset_roots)


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--seed", str(2**70)], "--seed"),
        (["evaluate", "--samples-per-class", "1"], "--samples-per-class"),
        (["evaluate", "--reference-limit", "1"], "--reference-limit"),  # passed, then the job failed: a covariance of 1 image
        (["generate", "--label", "cat", "--count", "10", "--seed", str(2**64)], "--seed"),
        (["generate", "--label", "cat", "--count", "10", "--model", "default:99999999999999999999"], "version"),
        (["generate", "--label", "cat", "--count", "10", "--model", "default:0"], "versions start at 1"),
        (["generate", "--label", "cat", "--count", "3000", "--shard-size", "1"], "CGAN_MIN_SHARD_SIZE"),
        (["train", "--preset", "mlp", "--dataset", "DS", "--steps", str(10**30)], "CGAN_MAX_STEPS"),
        (["train", "--preset", "mlp", "--dataset", "DS", "--steps", "4000", "--checkpoint-every", "1"], "CGAN_MAX_CHECKPOINTS"),
        (["train", "--preset", "mlp", "--dataset", "DS", "--seed", str(2**70)], "--seed"),
        (["train", "--preset", "mlp", "--dataset", "DS", "--name", "default"], "reserved"),
        (["train", "--preset", "mlp", "--dataset", "DS", "--name", "default-classifier"], "reserved"),
        (["train", "--preset", "mlp", "--dataset", "EMPTY"], "--dataset"),
        (["train", "--preset", "mlp", "--dataset", ""], "empty"),
        (["generate", "--label", "cat", "--count", "10", "--queue", ""], "invalid queue name ''"),  # an empty $QUEUE: not the default queue
    ],
)
def test_submit_refuses_what_a_worker_would_reject(embedded_env, tmp_path, args, message):
    _png(tmp_path / "ds" / "cat" / "a.png")
    (tmp_path / "empty").mkdir()
    args = [{"DS": str(tmp_path / "ds"), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    result = cganctl(embedded_env, "submit", *args, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "cganctl.db" not in " ".join(p.name for p in (tmp_path / "data").glob("*")) or cganctl(embedded_env, "jobs", "list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("CGAN_MAX_COUNT", "lots", "error: invalid setting CGAN_MAX_COUNT: Input should be a valid integer"),
        ("CGAN_ROUTES", "{bad", "error: invalid setting CGAN_ROUTES: not valid JSON (Expecting property name"),
        ("CGAN_ROUTES", '{"generat": "cpu"}', "error: invalid setting CGAN_ROUTES: 'generat' is not a job kind (train, evaluate, generate)"),
        ("CGAN_ROUTES", '{"generate": "c pu"}', "error: invalid setting CGAN_ROUTES: invalid queue name 'c pu'"),
        ("CGAN_DEFAULT_QUEUE", "", "error: invalid setting CGAN_DEFAULT_QUEUE: invalid queue name ''"),
        ("CGAN_BROKER_URL", "http://u:hunter2@x/", "error: invalid setting CGAN_BROKER_URL: the broker is Redis: a redis:// or rediss:// URL"),
        ("CGAN_LEASE_TIMEOUT", "1", "error: invalid settings: CGAN_LEASE_TIMEOUT (1 s) must be at least twice CGAN_HEARTBEAT_INTERVAL (10 s)"),
        ("CGAN_SHARD_SIZE", "5", "error: invalid settings: CGAN_SHARD_SIZE (5) is below CGAN_MIN_SHARD_SIZE (10): raise it"),
        # not finite, or absurd: each interval is at most a day, a task's limits 30 days, a heartbeat at least 0.1 s
        ("CGAN_LEASE_TIMEOUT", "inf", "error: invalid setting CGAN_LEASE_TIMEOUT: Input should be less than or equal to 86400"),
        ("CGAN_LEASE_TIMEOUT", "nan", "error: invalid setting CGAN_LEASE_TIMEOUT: Input should be less than or equal to 86400"),
        ("CGAN_LEASE_TIMEOUT", "1e12", "error: invalid setting CGAN_LEASE_TIMEOUT: Input should be less than or equal to 86400"),
        ("CGAN_TRANSIENT_RETRY_BUDGET", "inf", "error: invalid setting CGAN_TRANSIENT_RETRY_BUDGET: Input should be less than or equal to 86400"),
        ("CGAN_HEARTBEAT_INTERVAL", "1e-9", "error: invalid setting CGAN_HEARTBEAT_INTERVAL: Input should be greater than or equal to 0.1"),
        ("CGAN_VISIBILITY_TIMEOUT", str(10**12), "error: invalid setting CGAN_VISIBILITY_TIMEOUT: Input should be less than or equal to 2592000"),
        ("CGAN_TASK_TIME_LIMIT", "600", "error: invalid settings: CGAN_TASK_SOFT_TIME_LIMIT (18000 s) must be below CGAN_TASK_TIME_LIMIT (600 s)"),
        ("CGAN_DATA_DIR", "/proc/no-such-folder", "error: invalid setting CGAN_DATA_DIR: cannot create /proc/no-such-folder"),
        ("CGAN_DATA_DIR", "/etc/passwd/data", "error: invalid setting CGAN_DATA_DIR: cannot create /etc/passwd/data: /etc/passwd is a file, not a folder"),
        ("CGAN_DATASET_ROOTS", "/srv/data", 'error: invalid setting CGAN_DATASET_ROOTS: Input should be a valid list (a JSON list, e.g. ["/srv/datasets"])'),
        ("CGAN_DATABASE_URL", "nonsense", "error: invalid setting CGAN_DATABASE_URL nonsense: Could not parse"),
        ("CGAN_DATABASE_URL", "nosuchdb://u:hunter2@h/x", "error: invalid setting CGAN_DATABASE_URL nosuchdb://u:***@h/x: Can't load plugin"),
        ("CGAN_DATABASE_URL", "mysql://u:hunter2@h/x", "error: invalid setting CGAN_DATABASE_URL mysql://u:***@h/x: its driver is not installed"),
    ],
)
def test_invalid_setting_is_one_error_line(embedded_env, setting, value, message):
    env = dict(embedded_env, **{setting: value})
    result = cganctl(env, "submit", "generate", "--label", "cat", "--count", "10", timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(message) and "hunter2" not in result.stderr, result.stderr


def test_an_empty_data_dir_setting_is_the_default_folder(embedded_env, tmp_path):
    """CGAN_DATA_DIR= (empty, as an unset variable in many deploy files) is the default folder under
    XDG_DATA_HOME, as an empty value is unset for every other setting; never the current folder."""
    import subprocess

    from harness.services import cganctl_command

    home = tmp_path / "xdg"
    env = dict(embedded_env, CGAN_DATA_DIR="", XDG_DATA_HOME=str(home))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run([*cganctl_command(), "jobs", "list"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (home / "cganctl" / "cganctl.db").exists() and not list(cwd.iterdir())


@pytest.mark.parametrize("value", ["nonsense", "mysql://u:hunter2@h/x"])
def test_status_with_an_invalid_database_setting_exits_2(embedded_env, value):
    """An invalid setting is bad input (2) for `status` too, not an unreachable service (3)."""
    result = cganctl(dict(embedded_env, CGAN_DATABASE_URL=value), "status", timeout=120)
    assert result.returncode == 2 and "invalid setting CGAN_DATABASE_URL" in result.stdout and "hunter2" not in result.stdout, result.stdout


def test_first_use_is_concurrency_safe(embedded_env):
    """Four commands start at once on a fresh data folder: all create-or-wait for the schema and succeed."""
    import subprocess

    from harness.services import ROOT, cganctl_command

    args = [*cganctl_command(), "submit", "generate", "--label", "frog", "--count", "10", "--wait"]
    procs = [subprocess.Popen(args, env=embedded_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0, 0, 0], results


def test_checkpoint_retention_keeps_the_last_three(embedded_env, tmp_path):
    for cls in ("cat", "dog"):
        for i in range(4):
            _png(tmp_path / "ds" / cls / f"{i}.png")
    result = cganctl(embedded_env, "submit", "train", "--preset", "mlp", "--dataset", str(tmp_path / "ds"), "--steps", "10",
                     "--batch-size", "4", "--checkpoint-every", "2", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    base = tmp_path / "data" / "objects" / "jobs" / job["id"] / "checkpoints"
    folders = sorted(p.name for p in base.glob("step-*"))  # no empty step-N/ folder left behind either
    assert folders == ["step-0000006", "step-0000008", "step-0000010"], folders


def test_forged_model_width_is_refused_before_allocating():
    """A model row whose config claims 64x the widths would allocate gigabytes; the weights' header is
    compared first (the module is built on the meta device), so it fails with little memory."""
    import resource

    from cganmodel.checkpoint import CheckpointError
    from cganmodel.pretrained import default_model_files, load_generator

    weights, meta_path = default_model_files()
    meta = json.loads(meta_path.read_text())
    forged = dict(meta, config=dict(meta["config"], g_widths=[w * 64 for w in meta["config"]["g_widths"]]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError):
        load_generator(weights, forged)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 500 * 1024, grown_kib
