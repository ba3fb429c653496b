from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from harness.s3server import S3ServerError, start_weed, weed_binary

pytestmark = pytest.mark.integration

try:
    weed_binary()
except S3ServerError:
    pytest.skip("no weed binary", allow_module_level=True)


def test_put_get_list_delete(tmp_path: Path) -> None:
    started = time.monotonic()
    with start_weed(tmp_path) as s3:
        print(f"weed mini ready in {time.monotonic() - started:.2f} s")
        assert s3.endpoint_url.startswith("http://127.0.0.1:")
        client = s3.client()
        client.put_object(Bucket=s3.bucket, Key="jobs/1/a.txt", Body=b"hello")
        assert client.get_object(Bucket=s3.bucket, Key="jobs/1/a.txt")["Body"].read() == b"hello"
        listed = client.list_objects_v2(Bucket=s3.bucket, Prefix="jobs/1/")
        assert [o["Key"] for o in listed["Contents"]] == ["jobs/1/a.txt"]
        client.delete_object(Bucket=s3.bucket, Key="jobs/1/a.txt")
        assert client.list_objects_v2(Bucket=s3.bucket, Prefix="jobs/1/")["KeyCount"] == 0
    assert s3.process.poll() is not None
    assert list(tmp_path.glob("weed-*.log"))


def test_two_servers_at_once(tmp_path: Path) -> None:
    with start_weed(tmp_path / "a", bucket="one") as a, start_weed(tmp_path / "b", bucket="two") as b:
        assert a.endpoint_url != b.endpoint_url
        a.client().put_object(Bucket="one", Key="k", Body=b"a")
        b.client().put_object(Bucket="two", Key="k", Body=b"b")
        assert a.client().get_object(Bucket="one", Key="k")["Body"].read() == b"a"
        assert b.client().get_object(Bucket="two", Key="k")["Body"].read() == b"b"
        assert "two" not in {x["Name"] for x in a.client().list_buckets()["Buckets"]}


def test_binds_loopback_only(tmp_path: Path) -> None:
    with start_weed(tmp_path) as s3:
        port = int(s3.endpoint_url.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing: it just picks the outgoing address
            external = probe.getsockname()[0]
        if external.startswith("127."):
            pytest.skip("no non-loopback address to probe")
        with pytest.raises(OSError), socket.create_connection((external, port), timeout=1):
            pass
