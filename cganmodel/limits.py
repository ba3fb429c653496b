"""Budgets on what reading a dataset may cost, checked before anything large is read or decoded (torch-free).

``DataLimits`` travels from the settings (``CGAN_MAX_ARCHIVE_MEMBER_BYTES``, ``CGAN_MAX_IMAGE_PIXELS``,
``CGAN_MAX_IMAGE_SIDE``, ``CGAN_MAX_TOTAL_PIXELS``, ``CGAN_MAX_DATASET_ENTRIES``, ``CGAN_MAX_DATASET_BYTES``) to
:mod:`cganmodel.dataset_index` (member sizes, walk length) and :mod:`cganmodel.data` (image headers:
width and height are read from the header, JPEG and PNG alike, before any pixel is decoded).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass


class BudgetExceeded(ValueError):
    """A dataset asks for more than a budget allows (subclassed by ``DataError`` users via ``str``)."""


@dataclass(frozen=True)
class DataLimits:
    member_bytes: int = 64 * 2**20
    image_pixels: int = 4096 * 4096
    image_side: int = 8192
    total_pixels: int = 2_000_000_000
    entries: int = 2_000_000
    archive_bytes: int = 16 * 2**30  # what an archive's members add up to unpacked (a gzip of zeros is 1000x smaller)


DEFAULT_LIMITS = DataLimits()


def image_size_from_header(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header only (PIL opens lazily: no pixel is decoded)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def check_images(blobs: Sequence[bytes], names: Sequence[str], limits: DataLimits | None = None, total: int = 0) -> int:
    """Refuse any image whose header declares more than the per-image caps, or a dataset whose images
    add up to more than ``total_pixels``; raises :class:`BudgetExceeded` naming the file and the setting.

    ``total``: pixels of the images checked before (a dataset checked in batches); returns the new total."""
    from PIL import UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    limits = limits or DEFAULT_LIMITS
    for data, name in zip(blobs, names):
        try:
            width, height = image_size_from_header(data)
        except DecompressionBombError as exc:  # PIL's own check on open (at twice its cap, which is ours): our words
            import re

            declared = re.search(r"\((\d+) pixels\)", str(exc))
            size = f" declares {int(declared.group(1))} pixels:" if declared else " is"
            raise BudgetExceeded(f"image {name!r}{size} above the {limits.image_pixels}-pixel limit (CGAN_MAX_IMAGE_PIXELS)") from None
        except UnidentifiedImageError:
            raise BudgetExceeded(f"{name!r} is not an image that can be read (not a valid PNG, JPEG, BMP or other image file)") from None
        except Exception as exc:
            raise BudgetExceeded(f"cannot read the header of image {name!r} ({exc})") from None
        if width > limits.image_side or height > limits.image_side:
            raise BudgetExceeded(f"image {name!r} is {width}x{height}: above the {limits.image_side}-pixel side limit (CGAN_MAX_IMAGE_SIDE)")
        if width * height > limits.image_pixels:
            raise BudgetExceeded(f"image {name!r} is {width}x{height}: above the {limits.image_pixels}-pixel limit (CGAN_MAX_IMAGE_PIXELS)")
        total += width * height
        if total > limits.total_pixels:
            raise BudgetExceeded(f"the dataset decodes to more than {limits.total_pixels} pixels (CGAN_MAX_TOTAL_PIXELS)")
    return total
