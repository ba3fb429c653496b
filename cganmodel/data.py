"""Image data sets: torchvision CIFAR-10, ImageFolder directories and ImageFolder tarballs.

Everything is decoded once into one uint8 tensor (N, H, W, 3); tarballs are read in memory
(never unpacked to disk). Class names are the sorted folder names (ImageFolder order).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cganmodel.dataset_index import DataError, iter_tar, list_dir, parts, resolve, select, to_rgb
from cganmodel.imaging import to_float
from cganmodel.limits import DEFAULT_LIMITS, BudgetExceeded, DataLimits, check_images

Image.MAX_IMAGE_PIXELS = DEFAULT_LIMITS.image_pixels  # PIL's own bomb check, at our cap


class ImageData(Dataset):
    """Decoded images: ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,), ``classes``.

    As a torch ``Dataset`` an item is ``(float CHW in [-1, 1], label)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[3] != 3:
            raise DataError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError("labels must be one int per image")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = to_float(self.images[index].permute(2, 0, 1))
        return x, int(self.labels[index])

    def relabelled(self, classes: list[str]) -> "ImageData":
        """The same images labelled by their class names' indices in ``classes`` (a model's class list): a
        split that lacks some of the model's classes numbers its own classes differently. A class that is
        not in ``classes`` is a DataError (a model cannot score it)."""
        if list(classes) == self.classes:
            return self
        index = {name: i for i, name in enumerate(classes)}
        unknown = [name for name in self.classes if name not in index]
        if unknown:
            raise DataError(f"classes {', '.join(unknown)} are not among the model's classes ({', '.join(classes)})")
        mapping = torch.tensor([index[name] for name in self.classes], dtype=torch.int64)
        return ImageData(self.images, mapping[self.labels], list(classes))


def _resize(im: Image.Image, size: int) -> np.ndarray:
    """The one rule for an image of another size: its centred square (the longer side cropped, nothing
    stretched), then resized to ``size`` x ``size`` (bicubic)."""
    width, height = im.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _decode(data: bytes, name: str, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _resize(to_rgb(im), size)
    except Exception as exc:
        raise DataError(f"cannot decode image {name!r} ({exc})") from None


def _batch_jpeg_decoder() -> Callable[[list[torch.Tensor]], list[torch.Tensor]] | None:
    """torchvision's batched libjpeg-turbo decoder (about 4x faster than PIL per image here), or
    None where torchvision no longer ships it (its image I/O is deprecated since 0.29)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            return None

    def decode(encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(encoded, mode=ImageReadMode.RGB)

    return decode


def _decode_all(blobs: list[bytes], names: list[str], size: int) -> torch.Tensor:
    """Decode to uint8 (N, size, size, 3): JPEGs in batches with the fast decoder; anything else,
    or a JPEG batch the fast decoder rejects, through PIL (which names the broken file)."""
    decode_jpeg = _batch_jpeg_decoder()
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    jpegs = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"] if decode_jpeg is not None else []
    others = set(range(len(blobs))) - set(jpegs)
    for start in range(0, len(jpegs), 4096):
        chunk = jpegs[start : start + 4096]
        try:
            encoded = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in chunk]
            decoded = decode_jpeg(encoded)  # type: ignore[misc]  # not None: jpegs is empty otherwise
        except RuntimeError:
            others.update(chunk)
            continue
        if all(img.shape[1:] == (size, size) for img in decoded):
            out[chunk] = torch.stack(decoded).permute(0, 2, 3, 1).numpy()
            continue
        for i, img in zip(chunk, decoded):
            out[i] = _resize(Image.fromarray(img.permute(1, 2, 0).numpy()), size)
    for i in sorted(others):
        out[i] = _decode(blobs[i], names[i], size)
    return torch.from_numpy(out)


def _cifar10(split: str, root: str | None):  # -> torchvision.datasets.CIFAR10
    if split not in ("train", "test"):
        raise DataError(f"cifar10 has splits 'train' and 'test', not {split!r}")
    from torchvision.datasets import CIFAR10

    root = root or os.path.join(Path.home(), ".cache", "cganmodel", "data")
    try:
        return CIFAR10(root=root, train=(split == "train"), download=True)
    except Exception as exc:
        raise DataError(
            f"cannot load CIFAR-10 under {root!r} ({exc}): without a network, give a local ImageFolder folder "
            "or a .tar/.tar.gz of one instead of cifar10"
        ) from None


def load_image_dataset(
    source: str, split: str = "train", root: str | None = None, *, image_size: int = 32, limits: DataLimits | None = None
) -> ImageData:
    """Load ``source`` ("cifar10", an ImageFolder directory or tarball) fully into memory.

    Images that are not ``image_size`` square are resized (bicubic). Raises :class:`DataError`, also when
    the data is over a budget of ``limits`` (member size, image dimensions, total pixels: checked from
    sizes and image headers before anything is decoded).
    """
    if source == "cifar10":
        ds = _cifar10(split, root)
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        if images.shape[1:3] != (image_size, image_size):
            images = torch.from_numpy(np.stack([_resize(Image.fromarray(a), image_size) for a in ds.data]))
        return ImageData(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))
    path = resolve(source)
    if path.is_dir():
        names = list_dir(path, limits)
        by_class = select([parts(n) for n in names], split, source)
        picked = [(c, i) for c, idx in by_class.items() for i in idx]
        blobs = []
        for _, i in picked:
            try:
                blobs.append((path / names[i]).read_bytes())
            except OSError as exc:
                raise DataError(f"cannot read {path / names[i]} ({exc})") from None
    else:
        entries = list(iter_tar(path, read=True, limits=limits))
        names = [n for n, _ in entries]
        by_class = select([parts(n) for n in names], split, source)
        picked = [(c, i) for c, idx in by_class.items() for i in idx]
        blobs = [entries[i][1] or b"" for _, i in picked]
    classes = list(by_class)
    try:
        check_images(blobs, [names[i] for _, i in picked], limits)  # headers only: before any decode
    except BudgetExceeded as exc:
        raise DataError(f"{source}: {exc}") from None
    images = _decode_all(blobs, [names[i] for _, i in picked], image_size)
    index = {c: k for k, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c, _ in picked], dtype=torch.int64)
    return ImageData(images, labels, classes)
