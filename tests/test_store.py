"""The object store interface, on a local folder and on a real S3 server (SeaweedFS)."""
from __future__ import annotations

import uuid

import pytest

from scheduler.errors import NotFound, ServiceRefused, ServiceUnavailable
from scheduler.settings import Settings
from scheduler.store import LocalStore, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    s3 = request.getfixturevalue("s3")
    return S3Store(Settings(s3_bucket=s3.bucket, s3_endpoint_url=s3.endpoint_url, s3_access_key_id="k", s3_secret_access_key="s"))


def test_put_get_list_delete(store, tmp_path):
    prefix = f"jobs/{uuid.uuid4().hex}/"
    store.check()
    store.put_bytes(prefix + "a/one.bin", b"1")
    store.put_bytes(prefix + "a/one.bin", b"one")  # a retried task rewrites the same key
    source = tmp_path / "two.bin"
    source.write_bytes(b"two" * 10_000)
    store.put_file(prefix + "two.bin", source)
    assert store.get_bytes(prefix + "a/one.bin") == b"one"
    assert store.exists(prefix + "two.bin") and not store.exists(prefix + "missing")
    assert list(store.list(prefix)) == [prefix + "a/one.bin", prefix + "two.bin"]
    target = tmp_path / "copy.bin"
    store.download(prefix + "two.bin", target)
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(NotFound):
        store.get_bytes(prefix + "missing")
    assert store.delete_prefix(prefix) == 2
    assert list(store.list(prefix)) == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b"])
def test_unsafe_keys_refused(store, key):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_unreachable_s3_is_a_clear_error():
    store = S3Store(Settings(s3_bucket="b", s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="k", s3_secret_access_key="s"))
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(ServiceUnavailable, match="unreachable"):
        store.check()


def test_missing_bucket_is_a_clear_error(s3):
    store = S3Store(Settings(s3_bucket="no-such-bucket-here", s3_endpoint_url=s3.endpoint_url, s3_access_key_id="k", s3_secret_access_key="s"))
    with pytest.raises(ServiceRefused, match="no-such-bucket-here"):  # not an outage: a retry cannot help
        store.check()


def test_refused_credentials_are_one_error_line_and_write_nothing(tmp_path):
    """A wrong S3 secret (a rotated key, a host with an old env file) is a refusal, not an outage: `status`
    and a submit say which settings to fix (exit 3), nothing is written, the secret is never shown."""
    from harness.s3server import start_weed
    from harness.services import base_env, cganctl

    with start_weed(tmp_path / "s3", bucket="authed", credentials=("cganKEY", "right-secret-123")) as s3:
        env = base_env(tmp_path / "data")
        env.update(CGAN_S3_ENDPOINT_URL=s3.endpoint_url, CGAN_S3_BUCKET=s3.bucket, CGAN_S3_ACCESS_KEY_ID="cganKEY")
        right, wrong = dict(env, CGAN_S3_SECRET_ACCESS_KEY="right-secret-123"), dict(env, CGAN_S3_SECRET_ACCESS_KEY="wrong-secret-456")
        assert cganctl(right, "status").returncode == 0  # the server does accept its identity

        status = cganctl(wrong, "status")
        assert status.returncode == 3 and "not accepted" in status.stdout and "CGAN_S3_SECRET_ACCESS_KEY" in status.stdout, status.stdout
        submit = cganctl(wrong, "submit", "generate", "--count", "20", "--balanced", "--wait", timeout=300)
        assert submit.returncode == 3 and submit.stderr.startswith("error: S3 ") and submit.stderr.count("\n") == 1, submit.stderr
        assert "not accepted" in submit.stderr
        for output in (status.stdout, status.stderr, submit.stdout, submit.stderr):
            assert "wrong-secret-456" not in output
        assert not s3.client().list_objects_v2(Bucket=s3.bucket).get("Contents")  # nothing half-written
        assert cganctl(right, "jobs", "list", "--json", check=True).stdout.strip() == "[]"
        assert cganctl(right, "submit", "generate", "--count", "20", "--balanced", "--wait", timeout=300).returncode == 0


def test_delete_prefix_leaves_no_empty_folder_behind(tmp_path):
    """On the local store, deleting a prefix also removes the folders it empties, up to the store's root (S3 has none
    to leave; a cancelled job left an empty jobs/<id>/), and none that still holds something."""
    store = LocalStore(tmp_path / "objects")
    for key in ("jobs/a/checkpoints/step-1/x", "jobs/a/checkpoints/step-1/sub/y", "jobs/a/checkpoints/step-2/x", "jobs/a/keep"):
        store.put_bytes(key, b"1")
    assert store.delete_prefix("jobs/a/checkpoints/step-1/") == 2
    assert sorted(p.name for p in (tmp_path / "objects" / "jobs" / "a" / "checkpoints").iterdir()) == ["step-2"]
    assert store.delete_prefix("jobs/a/checkpoints/") == 1
    assert sorted(p.name for p in (tmp_path / "objects" / "jobs" / "a").iterdir()) == ["keep"]
    assert store.delete_prefix("jobs/a/") == 1
    assert list((tmp_path / "objects").iterdir()) == []
    store.put_bytes("jobs/b/x", b"2")  # a write makes its folders again
    assert store.get_bytes("jobs/b/x") == b"2"


def test_a_worker_waits_out_an_s3_outage_and_a_command_does_not(tmp_path):
    """A worker's S3 client (and an embedded job's) retries for minutes; a command's or the dashboard's gives up
    in about 20 s, so a frozen endpoint is an `error:` line, not a 6-minute hang (tests/test_fleet.py freezes one)."""
    from scheduler.dispatch import make_dispatcher
    from scheduler.runtime import Runtime
    from scheduler.store import S3_PATIENCE

    settings = Settings(data_dir=tmp_path, s3_bucket="b", s3_endpoint_url="http://127.0.0.1:9")
    command, worker = Runtime.create(settings), Runtime.create(settings, patient=True)
    embedded = make_dispatcher(Runtime.create(Settings(data_dir=tmp_path, s3_bucket="b", s3_endpoint_url="http://127.0.0.1:9"))).runtime
    for runtime, (read_timeout, attempts) in [(command, S3_PATIENCE["interactive"]), (worker, S3_PATIENCE["worker"]), (embedded, S3_PATIENCE["worker"])]:
        config = runtime.store.client.meta.config
        assert (config.read_timeout, config.retries["total_max_attempts"]) == (read_timeout, attempts)
    assert S3_PATIENCE["interactive"][0] * S3_PATIENCE["interactive"][1] <= 30 <= S3_PATIENCE["worker"][0] * S3_PATIENCE["worker"][1]

