"""Small server-rendered line charts: numbers in, SVG coordinates out (the template draws them)."""
from __future__ import annotations

import math

PALETTE = ("#d9480f", "#1971c2", "#2f9e44", "#9c36b5", "#e8590c", "#0c8599")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def line_chart(series: dict[str, list[tuple[float, float]]], *, width: int = 640, height: int = 260, x_label: str = "step",
               percent: bool = False) -> dict | None:
    """Coordinates of a chart with one polyline per series (points sorted by x); None without any point.
    ``percent``: y values are fractions, labelled as percentages (as the tables beside the chart)."""
    y_label = _percent if percent else _label
    points = [(x, y) for values in series.values() for x, y in values if _finite(x) and _finite(y)]
    if not points:
        return None
    left, right, top, bottom = 56, width - 16, 14, height - 36
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    whole_x = all(float(p[0]).is_integer() for p in points)  # steps: no tick at step 39.5
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high == y_low:
        pad = abs(y_low) * 0.1 or 1.0
        y_low, y_high = y_low - pad, y_high + pad

    def sx(x: float) -> float:
        return round(left + (x - x_low) / (x_high - x_low) * (right - left), 1)

    def sy(y: float) -> float:
        return round(bottom - (y - y_low) / (y_high - y_low) * (bottom - top), 1)

    lines = []
    for i, (name, values) in enumerate(series.items()):
        clean = sorted((x, y) for x, y in values if _finite(x) and _finite(y))
        if clean:
            coords = [(sx(x), sy(y)) for x, y in clean]
            lines.append(
                {
                    "name": name,
                    "colour": PALETTE[i % len(PALETTE)],
                    "points": " ".join(f"{x},{y}" for x, y in coords),
                    "dots": coords if len(coords) <= 40 else [],
                    "last": y_label(clean[-1][1]),
                }
            )
    return {
        "width": width,
        "height": height,
        "box": {"left": left, "right": right, "top": top, "bottom": bottom},
        "x_ticks": [{"at": sx(t), "label": _label(t)} for t in _ticks(x_low, x_high) if x_low <= t <= x_high and (t == int(t) or not whole_x)],
        "y_ticks": [{"at": sy(t), "label": y_label(t)} for t in _ticks(y_low, y_high) if y_low <= t <= y_high],
        "x_label": x_label,
        "lines": lines,
    }


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
