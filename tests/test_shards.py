from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cganmodel.shard_dataset import ShardDataset
from cganmodel.shards import (
    SHARD_EXTENSIONS,
    Sample,
    encode_png,
    iter_shard,
    shard_name,
    unpack_to_imagefolder,
    write_shard,
)

CLASSES = ["airplane", "bird", "cat"]


def make_samples(n: int = 6, size: int = 8) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(
            key=f"{i:06d}",
            image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            label=i % len(CLASSES),
            class_name=CLASSES[i % len(CLASSES)],
            meta={"seed": 7, "model": "cifar10-resnet", "index": i},
        )
        for i in range(n)
    ]


def shard_bytes(samples: list[Sample], fmt: str) -> bytes:
    buf = io.BytesIO()
    assert write_shard(buf, samples, fmt) == len(samples)
    return buf.getvalue()


def write_file(path: Path, samples: list[Sample], fmt: str) -> Path:
    path.write_bytes(shard_bytes(samples, fmt))
    return path


def test_names() -> None:
    assert shard_name(3, "webdataset") == "shard-000003.tar"
    assert shard_name(12, "npz") == "shard-000012.npz"
    assert SHARD_EXTENSIONS["imagefolder"] == ".tar"
    with pytest.raises(ValueError, match="unknown shard format"):
        shard_name(0, "zip")


def test_encode_png_roundtrip_and_deterministic() -> None:
    image = make_samples(1)[0].image
    assert encode_png(image) == encode_png(image.copy())
    assert np.array_equal(np.array(Image.open(io.BytesIO(encode_png(image)))), image)
    with pytest.raises(ValueError):
        encode_png(image.astype(np.float32))


@pytest.mark.parametrize("fmt", sorted(SHARD_EXTENSIONS))
def test_deterministic_and_roundtrip(fmt: str) -> None:
    samples = make_samples()
    data = shard_bytes(samples, fmt)
    assert data == shard_bytes(make_samples(), fmt)
    back = list(iter_shard(io.BytesIO(data), fmt, classes=CLASSES))
    assert [s.key for s in back] == [s.key for s in samples]
    assert [s.label for s in back] == [s.label for s in samples]
    assert [s.class_name for s in back] == [s.class_name for s in samples]
    for got, want in zip(back, samples):
        assert np.array_equal(got.image, want.image)
    if fmt == "webdataset":
        assert back[1].meta == {"seed": 7, "model": "cifar10-resnet", "index": 1}


def test_tar_members_are_normalised() -> None:
    with tarfile.open(fileobj=io.BytesIO(shard_bytes(make_samples(2), "webdataset"))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "000000.png", "000000.cls", "000000.json", "000001.png", "000001.cls", "000001.json"
        ]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        assert tar.extractfile("000001.cls").read() == b"1"  # type: ignore[union-attr]
        doc = json.loads(tar.extractfile("000001.json").read())  # type: ignore[union-attr]
        assert doc == {"index": 1, "label": "bird", "model": "cifar10-resnet", "seed": 7}
    with tarfile.open(fileobj=io.BytesIO(shard_bytes(make_samples(2), "imagefolder"))) as tar:
        assert tar.getnames() == ["airplane/000000.png", "bird/000001.png"]


def test_readable_by_webdataset_library(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    samples = make_samples()
    path = write_file(tmp_path / shard_name(0, "webdataset"), samples, "webdataset")
    rows = list(wds.WebDataset(str(path), shardshuffle=False).decode("pil").to_tuple("png", "cls", "json"))
    assert len(rows) == len(samples)
    for (image, cls, doc), want in zip(rows, samples):
        assert np.array_equal(np.array(image), want.image)
        assert cls == want.label
        assert doc["label"] == want.class_name


def test_npz_readable_by_numpy() -> None:
    samples = make_samples()
    with np.load(io.BytesIO(shard_bytes(samples, "npz"))) as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (6, 8, 8, 3)
        assert npz["labels"].dtype == np.int64 and npz["labels"].tolist() == [0, 1, 2, 0, 1, 2]
        assert npz["keys"].dtype.kind == "U" and npz["keys"][2] == "000002"
        assert np.array_equal(npz["images"][3], samples[3].image)


def test_shard_dataset_with_dataloader(tmp_path: Path) -> None:
    samples = make_samples(9)
    (tmp_path / "a").mkdir()
    write_file(tmp_path / "a" / "shard-000000.tar", samples[:3], "webdataset")
    write_file(tmp_path / "shard-000001.tar", samples[3:6], "imagefolder")
    write_file(tmp_path / "shard-000002.npz", samples[6:], "npz")
    ds = ShardDataset(tmp_path)
    assert len(ds) == 9
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    labels = []
    for xb, yb in DataLoader(ds, batch_size=4, num_workers=0):
        assert xb.shape[1:] == (3, 8, 8)
        labels += yb.tolist()
    # directory walk is sorted: shard-000001.tar, shard-000002.npz, a/shard-000000.tar
    assert sorted(labels) == sorted(s.label for s in samples)
    img, label = ShardDataset([tmp_path / "shard-000002.npz"], transform=lambda im: im.size)[0]
    assert (img, label) == ((8, 8), samples[6].label)


def test_shard_dataset_labels_follow_the_manifest_in_every_format(tmp_path: Path) -> None:
    """One cat-only job downloaded in each format: the label is the model's cat index (the manifest's
    classes), not the index among the folders present."""
    classes = CLASSES  # the model's: cat is index 2
    cats = [s for s in make_samples(9) if s.class_name == "cat"]
    labels = {}
    for fmt in ("webdataset", "imagefolder", "npz"):
        folder = tmp_path / fmt
        folder.mkdir()
        write_file(folder / shard_name(0, fmt), cats, fmt)
        (folder / "manifest.json").write_text(json.dumps({"classes": classes}))
        labels[fmt] = [ShardDataset(folder)[i][1] for i in range(len(cats))]
    assert labels == {fmt: [2] * len(cats) for fmt in labels}
    assert ShardDataset([tmp_path / "imagefolder" / shard_name(0, "imagefolder")])[0][1] == 2  # a shard named alone: its manifest beside it
    alone = tmp_path / "alone"
    alone.mkdir()
    write_file(alone / shard_name(0, "imagefolder"), cats, "imagefolder")
    assert ShardDataset(alone)[0][1] == 0  # no manifest at all: the folders present, ImageFolder order

    # the same job downloaded with --layout imagefolder (unpacked <class>/<key>.png beside its manifest.json)
    unpacked = tmp_path / "unpacked"
    assert unpack_to_imagefolder([tmp_path / "imagefolder" / shard_name(0, "imagefolder")], unpacked, classes) == len(cats)
    (unpacked / "manifest.json").write_text(json.dumps({"classes": classes}))
    data = ShardDataset(unpacked)
    assert len(data) == len(cats) and [data[i][1] for i in range(len(cats))] == [2] * len(cats)
    assert data[0][0].shape == ShardDataset(tmp_path / "npz")[0][0].shape
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no shards"):
        ShardDataset(tmp_path / "empty")


def test_several_downloads_in_one_folder_share_one_label_space(tmp_path: Path) -> None:
    """A folder holding downloads of several jobs (one a class, each format and layout) labels every item by the
    model's class list, from each download's own manifest: frog was labelled as automobile when one imagefolder
    download was mixed with webdataset ones (its label came from the folders present). classes=[...] relabels
    every format alike, and models with different class lists must be given one."""
    model = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog"]
    rng = np.random.default_rng(1)

    def job(name: str, label: str, fmt: str, unpack: bool = False) -> None:
        folder = tmp_path / "mix" / name
        (folder / ".shards" if unpack else folder).mkdir(parents=True)
        rows = [Sample(key=f"{i:08d}", image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), label=model.index(label), class_name=label,
                       meta={}) for i in range(3)]
        shard = write_file((folder / ".shards" if unpack else folder) / shard_name(0, fmt), rows, fmt)
        if unpack:
            unpack_to_imagefolder([shard], folder, model)
            shard.unlink()
        (folder / "manifest.json").write_text(json.dumps({"classes": model}))
        (folder / "contact-sheet.png").write_bytes(encode_png(rows[0].image))  # beside every download: no class image

    job("frog-if", "frog", "imagefolder")
    job("airplane-if", "airplane", "imagefolder")
    job("automobile-wds", "automobile", "webdataset")
    job("cat-npz", "cat", "npz")
    job("dog-unpacked", "dog", "webdataset", unpack=True)
    data = ShardDataset(tmp_path / "mix")
    assert len(data) == 15
    assert sorted({data[i][1] for i in range(len(data))}) == [0, 1, 3, 5, 6]  # airplane, automobile, cat, dog, frog
    for name, label in [("frog-if", "frog"), ("airplane-if", "airplane"), ("automobile-wds", "automobile"), ("cat-npz", "cat"), ("dog-unpacked", "dog")]:
        alone = ShardDataset(tmp_path / "mix" / name)
        assert [alone[i][1] for i in range(3)] == [model.index(label)] * 3, name  # as in the mix
        mine = ["frog", "dog", "cat", "automobile", "airplane"]
        relabelled = ShardDataset(tmp_path / "mix" / name, classes=mine)
        assert [relabelled[i][1] for i in range(3)] == [mine.index(label)] * 3, name  # every format, not imagefolder alone
    (tmp_path / "mix" / "frog-if" / "manifest.json").write_text(json.dumps({"classes": ["frog", "toad"]}))
    with pytest.raises(ValueError, match="2 different class lists: pass classes="):
        ShardDataset(tmp_path / "mix")


def test_unpack_then_torchvision_imagefolder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("torchvision.datasets")
    samples = make_samples(9)
    shards = [
        write_file(tmp_path / "s0.tar", samples[:3], "webdataset"),
        write_file(tmp_path / "s1.tar", samples[3:6], "imagefolder"),
        write_file(tmp_path / "s2.npz", samples[6:], "npz"),
    ]
    assert unpack_to_imagefolder(shards, tmp_path / "out", CLASSES) == 9
    folder = datasets.ImageFolder(str(tmp_path / "out"))
    assert folder.classes == CLASSES
    by_name = {Path(p).stem: label for p, label in folder.samples}
    assert by_name == {s.key: s.label for s in samples}
    image, label = folder[0]
    assert image.size == (8, 8)


def _tar_with(name: str, kind: bytes = tarfile.REGTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        data = encode_png(make_samples(1)[0].image)
        info.size = 0 if kind != tarfile.REGTYPE else len(data)
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "kind"),
    [("../cat/x.png", tarfile.REGTYPE), ("/abs/x.png", tarfile.REGTYPE), ("cat/../../x.png", tarfile.REGTYPE),
     ("cat/x.png", tarfile.SYMTYPE)],
)
def test_unsafe_members_refused(tmp_path: Path, name: str, kind: bytes) -> None:
    shard = tmp_path / "evil.tar"
    shard.write_bytes(_tar_with(name, kind))
    with pytest.raises(ValueError):
        unpack_to_imagefolder([shard], tmp_path / "out", CLASSES)
    with pytest.raises(ValueError):
        ShardDataset([shard])
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "x.png").exists()


def test_bad_keys_and_class_names_refused() -> None:
    sample = make_samples(1)[0]
    with pytest.raises(ValueError, match="key"):
        shard_bytes([Sample("a.b", sample.image, 0, "cat")], "webdataset")
    with pytest.raises(ValueError, match="folder name"):
        shard_bytes([Sample("k", sample.image, 0, "../cat")], "imagefolder")
    with pytest.raises(ValueError, match="classes"):
        next(iter_shard(io.BytesIO(shard_bytes([sample], "imagefolder")), "imagefolder"))
