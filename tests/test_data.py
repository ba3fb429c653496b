"""Data loading from ImageFolder directories and in-memory tarballs; clear errors."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cganmodel.data import DataError, ImageData, load_image_dataset
from cganmodel.dataset_index import count_images


def encode(colour: tuple[int, int, int], fmt: str = "PNG", size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format=fmt)
    return buf.getvalue()


CLASS_COLOURS = {"cat": (250, 0, 0), "airplane": (0, 0, 250), "dog": (0, 250, 0)}


def tree(split_counts: dict[str, int], prefix: str = "") -> dict[str, bytes]:
    """{relative path: bytes} of an ImageFolder tree; JPEGs and PNGs mixed."""
    files = {}
    for split, n in split_counts.items():
        for cls, colour in CLASS_COLOURS.items():
            for i in range(n):
                fmt = "JPEG" if i % 2 else "PNG"
                ext = "jpg" if fmt == "JPEG" else "png"
                files[f"{prefix}{split}{cls}/{i:04d}.{ext}"] = encode(colour, fmt)
    return files


def write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def check(data: ImageData, n_per_class: int) -> None:
    assert data.classes == ["airplane", "cat", "dog"]
    assert data.images.shape == (3 * n_per_class, 32, 32, 3) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0] * n_per_class + [1] * n_per_class + [2] * n_per_class
    # colour identifies the class (JPEG is lossy: approximately)
    means = data.images.float().mean(dim=(1, 2))
    assert (means[data.labels == 1, 0] > 200).all() and (means[data.labels == 0, 2] > 200).all()
    x, y = data[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and y == 0


def test_imagefolder_dir(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "ds", tree({"": 3}))
    (root / "README.txt").write_text("not an image, ignored")
    check(load_image_dataset(str(root)), 3)
    assert count_images(str(root)) == {"airplane": 3, "cat": 3, "dog": 3}


def test_imagefolder_dir_with_splits_and_resize(tmp_path: Path) -> None:
    files = tree({"train/": 4, "test/": 2})
    files["train/cat/big.png"] = encode((250, 0, 0), size=40)
    root = write_dir(tmp_path / "ds", files)
    train = load_image_dataset(str(root), "train")
    assert train.images.shape == (13, 32, 32, 3)  # the 40x40 image is resized
    check(load_image_dataset(str(root), "test"), 2)
    assert count_images(str(root), "train") == {"airplane": 4, "cat": 5, "dog": 4}
    with pytest.raises(DataError, match="no 'val' split"):
        load_image_dataset(str(root), "val")
    with_val = write_dir(tmp_path / "with-val", tree({"train/": 1, "val/": 1}))
    with pytest.raises(DataError, match=re.escape("no 'test' split; found ['train', 'val'] (a val/ split is not read as the test split: rename it test/)")):
        count_images(str(with_val), "test", require_split=True)


def test_tar_gz_with_root_folder_and_splits(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "ds.tar.gz", tree({"train/": 4, "test/": 2}, prefix="mini-jpeg/"))
    check(load_image_dataset(str(path), "train"), 4)
    check(load_image_dataset(str(path), "test"), 2)
    assert count_images(str(path), "test") == {"airplane": 2, "cat": 2, "dog": 2}
    assert not (tmp_path / "mini-jpeg").exists()  # never unpacked


def test_plain_tar(tmp_path: Path) -> None:
    files = tree({"": 2})
    path = tmp_path / "ds.tar"
    with tarfile.open(path, "w") as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    check(load_image_dataset(str(path)), 2)


def test_a_folder_and_its_archives_in_any_member_order_load_the_same(tmp_path: Path) -> None:
    files = {f"{cls}/{sub}{i}.png": encode((40 * i, 10 * len(sub), 200)) for cls in ("cat", "dog") for sub in ("", "x/") for i in range(3)}
    folder = write_dir(tmp_path / "ds", files)
    reference = load_image_dataset(str(folder))
    for order in (list(files), list(reversed(files)), sorted(files, key=lambda n: n[::-1])):
        data = load_image_dataset(str(write_tar(tmp_path / "ds.tar.gz", {n: files[n] for n in order})))
        assert data.labels.tolist() == reference.labels.tolist() and data.classes == ["cat", "dog"]
        assert torch.equal(data.images, reference.images)


@pytest.mark.parametrize(
    "names, message",
    [
        (["train/../../evil/0.png", "train/cat/0.png"], "'train/../../evil/0.png' climbs out of the tree with '..'"),
        (["cat/../dog/0.png", "cat/0.png", "dog/1.png"], "climbs out of the tree"),
        (["train/0.png", "train/1.png"], "images directly in the split folder 'train', e.g. 'train/0.png' (expected train/<class>/<image>)"),
        (["data/test/0.png", "data/prod/cat/0.png"], "images directly in the split folder 'test'"),
        (["train/cat/0.png", "train/x.png"], "images directly in the split folder 'train', e.g. 'train/x.png'"),
        (["ca\\t/0.png", "dog/0.png"], "cannot be a folder name"),
        # a newline cannot be drawn on the contact sheet or shown on one line: refused when read, not after training
        (["new\nline/0.png", "dog/0.png"], "class name 'new\\nline' holds a control character ('\\n')"),
        (["esc\x1b[31mred/0.png", "dog/0.png"], "holds a control character ('\\x1b')"),
        (["y" * 300 + "/0.png", "dog/0.png"], "is 300 bytes, above the 255 a folder name may have"),
    ],
)
def test_class_folders_every_format_can_hold(tmp_path: Path, names: list[str], message: str) -> None:
    archive = write_tar(tmp_path / "odd.tar.gz", {n: encode((9, 9, 9)) for n in names})
    for read in (count_images, load_image_dataset):
        with pytest.raises(DataError, match=re.escape(message)):
            read(str(archive))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_image_dataset(str(tmp_path / "empty"))
    gifs = write_dir(tmp_path / "gifs", {"cat/0.gif": b"GIF89a", "dog/0.gif": b"GIF89a"})
    with pytest.raises(DataError, match=r"no image files found \(the files read end in .jpg, .jpeg, .png, "):
        load_image_dataset(str(gifs))
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(DataError, match="not a directory or a .tar"):
        load_image_dataset(str(tmp_path / "file.txt"))
    loose = write_dir(tmp_path / "loose", {**tree({"": 1}), "stray.png": encode((1, 2, 3))})
    with pytest.raises(DataError, match="outside class folders"):
        load_image_dataset(str(loose))
    mixed = write_dir(tmp_path / "mixed", {**tree({"train/": 1}), "cats/0.png": encode((1, 2, 3))})
    with pytest.raises(DataError, match=r"mixes split folders with other folders: \['cats', 'train'\], e.g. 'cats/0.png'"):
        load_image_dataset(str(mixed))
    broken = write_dir(tmp_path / "broken", {**tree({"": 1}), "cat/bad.jpg": b"\xff\xd8 not really a jpeg"})
    with pytest.raises(DataError, match="cat/bad.jpg"):
        load_image_dataset(str(broken))
    good = write_tar(tmp_path / "good.tar.gz", tree({"": 2}))
    twice = tmp_path / "twice.tar"
    with tarfile.open(twice, "w") as tf:
        for rel, data in [*tree({"": 1}).items(), ("cat/0000.png", encode((1, 2, 3)))]:
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    for read in (count_images, load_image_dataset):
        with pytest.raises(DataError, match="member 'cat/0000.png' appears twice"):
            read(str(twice))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read tar archive"):
        load_image_dataset(str(truncated))
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError):
        load_image_dataset(str(garbage))
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_image_dataset("cifar10", split="val")
    assert issubclass(DataError, ValueError)


def test_imagedata_validation() -> None:
    with pytest.raises(DataError):
        ImageData(torch.zeros(2, 32, 32, 3), torch.zeros(2, dtype=torch.long), ["a"])
    d = ImageData(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), ["a"])
    assert np.allclose(d[0][0].numpy(), 1.0)


def test_a_split_relabelled_by_a_models_classes() -> None:
    """A test split without "apple" numbers banana 0 and cherry 1; the model's indices are apple 0, banana 1, cherry 2."""
    split = ImageData(torch.zeros(3, 2, 2, 3, dtype=torch.uint8), torch.tensor([0, 1, 1]), ["banana", "cherry"])
    relabelled = split.relabelled(["apple", "banana", "cherry"])
    assert relabelled.labels.tolist() == [1, 2, 2] and relabelled.classes == ["apple", "banana", "cherry"]
    assert split.relabelled(["banana", "cherry"]) is split
    with pytest.raises(DataError, match="classes cherry are not among the model's classes"):
        split.relabelled(["apple", "banana"])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_non_square_image_is_cropped_to_its_centre_not_stretched(tmp_path: Path, fmt: str) -> None:
    """A 96x48 image, black left and right quarters around a white 48x48 centre: its 32x32 is the white centre."""
    wide = Image.new("RGB", (96, 48), (0, 0, 0))
    wide.paste((255, 255, 255), (24, 0, 72, 48))
    tall = wide.transpose(Image.Transpose.ROTATE_90)
    files = {}
    for name, image in (("wide", wide), ("tall", tall)):
        buf = io.BytesIO()
        image.save(buf, format=fmt, quality=95)
        files[f"{name}/0.{fmt.lower()}"] = buf.getvalue()
    data = load_image_dataset(str(write_dir(tmp_path / "ds", files)))
    assert data.images.shape == (2, 32, 32, 3)
    assert data.images.float().min() > 200, data.images.float().amin(dim=(0, 3))  # stretched, the edges were black


def test_files_that_are_not_images_are_counted_for_the_user(tmp_path: Path) -> None:
    """A class of .heic photos is no class here: the reader says what it skipped, by extension (hidden files aside),
    and names the class folders left without an image (an empty one too; a link to a class folder is no class)."""
    from cganmodel.dataset_index import Skipped

    files = {**tree({"": 2}), "cat/notes.txt": b"x", "cat/.DS_Store": b"x", "phone/0.HEIC": b"x", "phone/1.heic": b"x"}
    root = write_dir(tmp_path / "ds", files)
    (root / "empty").mkdir()
    (root / ".cache").mkdir()
    (root / "kitty").symlink_to("cat")
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="ds")  # directory members, the empty folder's included, as `tar czf` writes them
    for source in (root, archive):
        skipped = Skipped()
        assert count_images(str(source), skipped=skipped) == {"airplane": 2, "cat": 2, "dog": 2}
        assert skipped.files == {".heic": 2, ".txt": 1}, source
        assert skipped.empty_classes == ["empty", "phone"], source
        links = ["1 archive member is a link and was not read (links in an archive are never followed: pack the files themselves, tar -h)"]
        assert skipped.notes() == [
            "3 files are not images and were not read (.heic 2, .txt 1; images end in .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)",
            "2 class folders hold no image and are not classes of this dataset: empty, phone",
        ] + (links if source == archive else []), source  # in a folder, a link to a class folder is read as no class
    files_only = tmp_path / "files-only.tar.gz"  # `tar czf x.tar.gz ds/*/*`: no folder members, the folders are implied
    with tarfile.open(files_only, "w:gz") as tf:
        for name in sorted(files):
            if not name.endswith(".DS_Store"):
                tf.add(root / name, arcname=f"ds/{name}")
    skipped = Skipped()
    assert count_images(str(files_only), skipped=skipped) == {"airplane": 2, "cat": 2, "dog": 2}
    assert skipped.empty_classes == ["phone"]  # it was not named: only folder members counted as folders
    split = Skipped()  # in a tree with splits, the train split's class folders (the test split's own aside)
    files = {**tree({"train/": 1}), "train/frog/.keep": b"", "test/cat/0.png": encode((1, 2, 3)), "test/ship/.keep": b""}
    assert count_images(str(write_dir(tmp_path / "split", files)), skipped=split) == {"airplane": 1, "cat": 1, "dog": 1}
    assert split.notes() == ["1 class folder holds no image and is not a class of this dataset: frog"]
    assert Skipped().notes() == []


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """A 16-bit grayscale PNG (mode I;16) holds 0-65535: read as 0-255 of the same brightness, where PIL's own
    conversion clips every value above 255 to white. A floating-point TIFF has no known range: refused by name."""
    levels = {"dark": 1000, "mid": 32768, "white": 65535}
    files = {}
    for name, value in levels.items():
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32), value, dtype=np.uint16)).save(buf, format="PNG")
        files[f"{name}/0.png"] = buf.getvalue()
    data = load_image_dataset(str(write_dir(tmp_path / "deep", files)))
    means = {c: data.images[data.labels == i].float().mean().item() for i, c in enumerate(data.classes)}
    assert means == {"dark": 4.0, "mid": 128.0, "white": 255.0}, means  # value * 255 / 65535, rounded
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32)).save(buf, format="TIFF")
    with pytest.raises(DataError, match=r"cannot decode image 'f/0.tif' \(a floating-point image \(mode F\) has no known range"):
        load_image_dataset(str(write_dir(tmp_path / "float", {"f/0.tif": buf.getvalue(), "g/0.png": encode((1, 2, 3))})))


def test_hidden_folders_and_special_members_of_an_archive_are_not_read(tmp_path: Path) -> None:
    """A folder and its archive give the same classes: a hidden folder (.ipynb_checkpoints/, .git/) is not
    entered in either; a device or FIFO member of an archive is never read, and counted for the user."""
    from cganmodel.dataset_index import Skipped

    files = {**tree({"": 1}), ".ipynb_checkpoints/0.png": encode((5, 5, 5)), "cat/.hidden/1.png": encode((5, 5, 5)),
             ".git/objects/ab": b"x"}
    root = write_dir(tmp_path / "ds", files)
    archive = tmp_path / "ds.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root, arcname=".")
        fifo = tarfile.TarInfo("cat/pipe.png")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
    for source in (root, archive):
        skipped = Skipped()
        assert count_images(str(source), skipped=skipped) == {"airplane": 1, "cat": 1, "dog": 1}, source
        assert skipped.files == {}, source
    assert skipped.notes() == ["1 archive member is a device or FIFO and was not read"]
    assert load_image_dataset(str(archive)).classes == ["airplane", "cat", "dog"]


def test_a_link_that_cannot_be_resolved_is_not_followed(tmp_path: Path) -> None:
    """A link in a dataset folder to a target the walk may not even resolve (/proc/1/cwd as a user without
    that right; here a link loop) is passed over like a link that leads out, not a PermissionError."""
    root = write_dir(tmp_path / "ds", tree({"": 1}))
    (root / "loop").symlink_to(root / "loop")
    (root / "out").symlink_to("/proc/1/cwd")
    assert count_images(str(root)) == {"airplane": 1, "cat": 1, "dog": 1}
