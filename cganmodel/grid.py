"""PNG pictures drawn with PIL: labelled class grids and loss curves (deterministic bytes)."""

from __future__ import annotations

import io
import unicodedata

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 2
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


def _drawable(name: str) -> str:
    """A class name as PIL's default font can draw it (ASCII only: it has no é): accents dropped ("naïve" ->
    "naive"), any other character "?". ASCII names are unchanged; the exact names are in the manifest."""
    out = []
    for char in name:
        if char.isascii():
            out.append(char)
        elif unicodedata.combining(char):  # the accent of a decomposed é (NFD): dropped
            continue
        else:
            folded = "".join(c for c in unicodedata.normalize("NFKD", char) if c.isascii())
            out.append(folded or "?")
    return "".join(out)


def labelled_grid_png(images_by_class: dict[str, np.ndarray]) -> bytes:
    """Render ``{class name: uint8 (N, H, W, 3)}`` as one labelled row per class (dict order).

    Deterministic: the same input gives the same bytes (PIL default font, no PNG metadata).
    """
    if not images_by_class:
        raise ValueError("no classes to draw")
    shapes = set()
    for name, arr in images_by_class.items():
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[3] == 3):
            raise ValueError(f"images for {name!r} must be a uint8 array shaped (N, H, W, 3)")
        if len(arr):
            shapes.add(arr.shape[1:3])
    if len(shapes) > 1:
        raise ValueError(f"all images must have the same size, got {sorted(shapes)}")
    h, w = shapes.pop() if shapes else (32, 32)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [_drawable(str(name)) for name in images_by_class]
    label_w = max(int(measure.textlength(label, font=font)) for label in labels) + 3 * PAD
    cols = max(1, max(len(a) for a in images_by_class.values()))
    width = label_w + cols * (w + PAD) + PAD
    height = len(images_by_class) * (h + PAD) + PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row, (label, arr) in enumerate(zip(labels, images_by_class.values())):
        top = PAD + row * (h + PAD)
        draw.text((PAD, top + h // 2), label, fill=TEXT, font=font, anchor="lm")
        for col, img in enumerate(arr):
            canvas.paste(Image.fromarray(np.ascontiguousarray(img)), (label_w + col * (w + PAD), top))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def loss_curve_png(history: list[list[float]], width: int = 640, height: int = 320) -> bytes:
    """Plot ``[[step, d_loss, g_loss], ...]`` as two polylines (D red, G blue) with PIL."""
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, width - 12, 24, height - 28
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    draw.text((left, 6), "D loss", fill=(200, 30, 30), font=font)
    draw.text((left + 70, 6), "G loss", fill=(30, 60, 200), font=font)
    if history:
        steps = [h[0] for h in history]
        values = [v for h in history for v in h[1:3]]
        s0, s1 = min(steps), max(steps)
        v0, v1 = min(values), max(values)
        if v1 - v0 < 1e-9:
            v0, v1 = v0 - 1, v1 + 1
        sx = (right - left) / max(s1 - s0, 1)
        sy = (bottom - top) / (v1 - v0)

        def xy(step: float, v: float) -> tuple[float, float]:
            return left + (step - s0) * sx, bottom - (v - v0) * sy

        for col, colour in ((1, (200, 30, 30)), (2, (30, 60, 200))):
            points = [xy(h[0], h[col]) for h in history]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            else:
                draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=colour)
        draw.text((4, top), f"{v1:.3g}", fill=(0, 0, 0), font=font)
        draw.text((4, bottom - 10), f"{v0:.3g}", fill=(0, 0, 0), font=font)
        draw.text((left, bottom + 6), f"step {s0:g}", fill=(0, 0, 0), font=font)
        draw.text((right, bottom + 6), f"step {s1:g}", fill=(0, 0, 0), font=font, anchor="ra")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
