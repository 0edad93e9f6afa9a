"""Inline SVG charts for report.html: curves over eps (with the data the page's script reads) and intervals.

Written by hand rather than by matplotlib so the page can read values under the mouse: every
point's position and value are known here and handed to the script as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape

from redblue.report.page import Curves, Intervals

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 42


def _f(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


class _Scale:
    """Data to pixel coordinates, y pointing down."""

    def __init__(self, x: Sequence[float], y_range: tuple[float, float], *, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.x_low, self.x_high = min(x), max(x)
        if self.x_high == self.x_low:  # a single eps: centre it
            self.x_low, self.x_high = self.x_low - 0.5, self.x_high + 0.5
        self.y_low, self.y_high = y_range
        self.width, self.height = width, height

    def px(self, x: float) -> float:
        return LEFT + (x - self.x_low) / (self.x_high - self.x_low) * (self.width - LEFT - RIGHT)

    def py(self, y: float) -> float:
        y = min(max(y, self.y_low), self.y_high)
        return self.height - BOTTOM - (y - self.y_low) / (self.y_high - self.y_low) * (self.height - TOP - BOTTOM)


def _axes(scale: _Scale, x_ticks: Sequence[float], x_label: str, y_label: str) -> list[str]:
    parts = []
    for y in _ticks(scale.y_low, scale.y_high):
        py = _f(scale.py(y))
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{scale.width - RIGHT}" y1="{py}" y2="{py}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{py}" text-anchor="end" dominant-baseline="middle">{_tick_label(y)}</text>')
    base = scale.height - BOTTOM
    for x in x_ticks:
        px = _f(scale.px(x))
        parts.append(f'<line class="axis" x1="{px}" x2="{px}" y1="{base}" y2="{base + 4}"/>')
        parts.append(f'<text class="tick" x="{px}" y="{base + 16}" text-anchor="middle">{_tick_label(x)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{scale.width - RIGHT}" y1="{base}" y2="{base}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{base}"/>')
    parts.append(f'<text class="label" x="{(LEFT + scale.width - RIGHT) / 2:.0f}" y="{scale.height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    middle = (TOP + base) / 2
    parts.append(f'<text class="label" x="14" y="{middle:.0f}" text-anchor="middle" transform="rotate(-90 14 {middle:.0f})">{escape(y_label)}</text>')
    return parts


def _x_ticks(x: Sequence[float]) -> list[float]:
    distinct = sorted(set(x))
    if len(distinct) <= 9:
        return distinct
    return _ticks(distinct[0], distinct[-1], 6)


def curves_svg(block: Curves, *, chart_id: str) -> str:
    """The chart's <svg> and a JSON script with x, pixel x, and each series' values (for hover and slider)."""
    scale = _Scale(block.x, block.y_range)
    parts = [
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(block.title)}">',
        *_axes(scale, _x_ticks(block.x), block.x_label, block.y_label),
    ]
    data = {"x": list(block.x), "x_label": block.x_label, "px": [round(scale.px(x), 2) for x in block.x], "series": []}
    for index, series in enumerate(block.series):
        color = PALETTE[index % len(PALETTE)]
        data["series"].append({"name": series.name, "color": color, "y": [_finite(y) for y in series.y]})
        points = [(x, y) for x, y in zip(block.x, series.y) if _finite(y) is not None]
        if series.band is not None:
            band = [(x, b) for x, b in zip(block.x, series.band) if b is not None]
            if len(band) > 1:
                upper = [f"{_f(scale.px(x))},{_f(scale.py(b[1]))}" for x, b in band]
                lower = [f"{_f(scale.px(x))},{_f(scale.py(b[0]))}" for x, b in reversed(band)]
                parts.append(f'<polygon class="band" fill="{color}" points="{" ".join(upper + lower)}"/>')
        if not series.markers_only and len(points) > 1:
            coords = " ".join(f"{_f(scale.px(x))},{_f(scale.py(y))}" for x, y in points)
            dash = ' stroke-dasharray="6 4"' if series.dashed else ""
            parts.append(f'<polyline class="line" stroke="{color}"{dash} points="{coords}"/>')
        for i, (x, y) in enumerate(zip(block.x, series.y)):
            if _finite(y) is None:
                continue
            shape = "mark" if series.markers_only else "dot"
            parts.append(
                f'<circle class="{shape}" data-i="{i}" cx="{_f(scale.px(x))}" cy="{_f(scale.py(y))}" '
                f'r="{4 if series.markers_only else 2.5}" fill="{color}"><title>{escape(series.name)}: '
                f'{_tick_label(x)} → {y:.4f}</title></circle>'
            )
    parts.append(f'<line class="guide" x1="0" x2="0" y1="{TOP}" y2="{HEIGHT - BOTTOM}" visibility="hidden"/>')
    parts.append("</svg>")
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    return "".join(parts) + f'<script type="application/json" class="chart-data" id="{chart_id}-data">{payload}</script>'


def intervals_svg(block: Intervals) -> str:
    """One bar per row from the lower bound to the upper one on a [0, 1] axis, both ends marked."""
    rows = [r for r in block.rows if r[1] is not None or r[2] is not None]
    row_height, label_width = 26, 120
    height = TOP + BOTTOM + row_height * max(1, len(rows))
    width = WIDTH
    axis_left, axis_right = label_width, width - RIGHT

    def px(value: float) -> float:
        return axis_left + min(max(value, 0.0), 1.0) * (axis_right - axis_left)

    parts = [f'<svg class="intervals" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{escape(block.title)}">']
    base = height - BOTTOM
    for tick in _ticks(0.0, 1.0):
        x = _f(px(tick))
        parts.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{TOP}" y2="{base}"/>')
        parts.append(f'<text class="tick" x="{x}" y="{base + 16}" text-anchor="middle">{tick:.0%}</text>')
    for i, (label, low, high) in enumerate(rows):
        y = TOP + row_height * i + row_height / 2
        parts.append(f'<text class="tick" x="{axis_left - 8}" y="{y:.1f}" text-anchor="end" dominant-baseline="middle">{escape(label)}</text>')
        if low is not None and high is not None:
            parts.append(
                f'<rect class="interval" x="{_f(px(low))}" y="{y - 7:.1f}" width="{_f(max(px(high) - px(low), 1.0))}" height="14">'
                f"<title>{escape(label)}: robust accuracy in [{low:.2%}, {high:.2%}]</title></rect>"
            )
        for value, css, name in ((low, "low", block.low_label), (high, "high", block.high_label)):
            if value is not None:
                parts.append(
                    f'<line class="end-{css}" x1="{_f(px(value))}" x2="{_f(px(value))}" y1="{y - 9:.1f}" y2="{y + 9:.1f}">'
                    f"<title>{escape(label)}: {escape(name)} {value:.2%}</title></line>"
                )
    parts.append(f'<text class="label" x="{(axis_left + axis_right) / 2:.0f}" y="{height - 6}" text-anchor="middle">robust accuracy</text>')
    parts.append("</svg>")
    return "".join(parts)
