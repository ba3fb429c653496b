"""The object store interface, on a local folder and on a real S3 server (SeaweedFS)."""
from __future__ import annotations

import uuid

import pytest

from scheduler.errors import NotFound, ServiceUnavailable
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
    with pytest.raises(ServiceUnavailable, match="no-such-bucket-here"):
        store.check()
