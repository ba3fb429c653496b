"""The typed manifest: what the worker writes is what `results download` reads, and unsafe names are refused."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cganmodel.seeding import describe_generate_seeding
from scheduler.manifest import Manifest


def _manifest(name: str = "shard-000000.tar") -> dict:
    return {
        "job_id": "j", "kind": "generate", "format": "webdataset", "count": 2, "count_per_class": {"cat": 2},
        "classes": ["cat", "dog"], "model": {"ref": "default:1", "sha256": "ab", "preset": "resnet"}, "seed": 0,
        "seeding": describe_generate_seeding(), "spec": {"kind": "generate"}, "acceptance": None,
        "files": [{"key": f"jobs/j/shards/{name}", "name": name, "sha256": "cd", "size": 10, "count": 2,
                   "count_per_class": {"cat": 2}, "shard_seed": 5}],
    }


def test_round_trip_is_sorted_indented_json():
    data = Manifest.model_validate(_manifest()).to_bytes()
    assert json.loads(data) == _manifest()
    assert data == json.dumps(_manifest(), indent=2, sort_keys=True).encode()
    assert Manifest.from_bytes(data).files[0].shard_seed == 5


@pytest.mark.parametrize("name", ["../evil.tar", "/etc/passwd", "a/b.tar", ".", "..", "", "a\\b.tar"])
def test_unsafe_file_names_are_refused(name):
    with pytest.raises(ValidationError, match="unsafe file name"):
        Manifest.model_validate(_manifest(name))
