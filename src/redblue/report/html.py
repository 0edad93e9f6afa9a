"""report.html: one self-contained page (styles, script, images and charts inline; no network access).

`render_html(page)` turns a `redblue.report.page.Page` into HTML. The page's Content-Security-Policy
allows no fetch of any kind (images only as data: URLs, the one inline script by its hash), so a
report can never reach the network, and a broken reference shows as an error in the console.
The script (assets/report.js, written for this page, no framework) sorts tables on a header
click, reads curves under the mouse or a slider, and reads heatmap cells under the mouse.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import struct
import zlib
from html import escape
from importlib import resources

import numpy as np

import redblue
from redblue.report.page import (
    Block,
    Curves,
    Findings,
    Heatmap,
    Image,
    ImageGrid,
    Intervals,
    KeyValues,
    Page,
    Picture,
    Table,
    Text,
    format_value,
    sorted_findings,
)
from redblue.report.svg import PALETTE, curves_svg, intervals_svg

IMAGE_DISPLAY_PX = 84  # a 28x28 image shown 3x, pixelated
# red team (low accuracy) to blue team (high accuracy), through a light neutral
HEAT_LOW, HEAT_MID, HEAT_HIGH = (192, 57, 43), (244, 241, 234), (41, 98, 170)


def _asset(name: str) -> str:
    return resources.files("redblue.report").joinpath("assets", name).read_text(encoding="utf-8")


# --- images -------------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 pixels: (H, W) grayscale or (H, W, 3) RGB (8 bits per channel, no filtering)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"png_bytes needs uint8 (H, W) or (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every scanline

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def image_pixels(image: Image) -> np.ndarray:
    """uint8 pixels of an Image: gray [0, 1] -> 0..255; signed [-1, 1] -> red (-1), white (0), blue (+1)."""
    values = np.nan_to_num(np.asarray(image.pixels, dtype=np.float64), nan=0.0)
    if image.scale == "gray":
        return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    if image.scale != "signed":
        raise ValueError(f"unknown image scale {image.scale!r}; use gray or signed")
    t = np.clip(values, -1.0, 1.0)[..., None]
    white, red, blue = np.array([255.0, 255, 255]), np.array(HEAT_LOW, float), np.array(HEAT_HIGH, float)
    rgb = np.where(t < 0, white + (red - white) * -t, white + (blue - white) * t)
    return np.round(rgb).astype(np.uint8)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- colours ------------------------------------------------------------------------------------


def heat_color(value: float, low: float, high: float) -> tuple[int, int, int]:
    """RGB for `value` on the low (red) .. high (blue) scale, through a light neutral at the middle."""
    t = 0.5 if high == low else min(max((value - low) / (high - low), 0.0), 1.0)
    a, b, u = (HEAT_LOW, HEAT_MID, t * 2) if t < 0.5 else (HEAT_MID, HEAT_HIGH, t * 2 - 1)
    return tuple(round(x + (y - x) * u) for x, y in zip(a, b))  # type: ignore[return-value]


def _text_color(rgb: tuple[int, int, int]) -> str:
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return "#111" if luminance > 140 else "#fff"


# --- blocks -------------------------------------------------------------------------------------


def _sort_key(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        return repr(float(value))
    return ""


def _table(block: Table, ids: itertools.count) -> str:
    formats = block.formats or ("",) * len(block.columns)
    css = "data sortable" if block.sortable else "data"
    focusable = ' tabindex="0"' if block.sortable else ""
    head = "".join(f'<th scope="col" aria-sort="none"{focusable}>{escape(c)}</th>' for c in block.columns)
    body = []
    for row in block.rows:
        cells = []
        for value, spec in zip(row, formats):
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            key = f' data-sort="{_sort_key(value)}"' if numeric else ""
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}{key}>{escape(format_value(value, spec))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = f"<figcaption>{escape(block.title)}</figcaption>" if block.title else ""
    caption = f'<p class="caption">{escape(block.caption)}</p>' if block.caption else ""
    return (f'<figure class="table">{title}<table class="{css}" id="table-{next(ids)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>{caption}</figure>")


def _curves(block: Curves, ids: itertools.count) -> str:
    chart_id = f"chart-{next(ids)}"
    legend = "".join(
        f'<li><span class="swatch{" dashed" if s.dashed else ""}{" marker" if s.markers_only else ""}" '
        f'style="--c:{PALETTE[i % len(PALETTE)]}"></span>{escape(s.name)}</li>'
        for i, s in enumerate(block.series)
    )
    slider = (
        f'<label class="slider">{escape(block.x_label)} <input type="range" min="0" max="{len(block.x) - 1}" step="1" '
        f'value="0" aria-label="{escape(block.x_label)}"></label>'
    )
    return (
        f'<figure class="chart" id="{chart_id}"><figcaption>{escape(block.title)}</figcaption>'
        f'{curves_svg(block, chart_id=chart_id)}<ul class="legend">{legend}</ul>{slider}'
        f'<output class="readout" aria-live="polite"></output></figure>'
    )


def _heatmap(block: Heatmap, ids: itertools.count) -> str:
    corner = escape(f"{block.row_header} \\ {block.col_header}".strip(" \\"))
    head = f'<th class="corner">{corner}</th>' + "".join(f'<th scope="col">{escape(c)}</th>' for c in block.col_labels)
    body = []
    for label, row in zip(block.row_labels, block.values):
        cells = [f'<th scope="row">{escape(label)}</th>']
        for column, value in zip(block.col_labels, row):
            text = format_value(value, block.format)
            where = escape(f"{label} × {column}: {text}")
            if value is None:
                cells.append(f'<td class="missing" title="{where}" data-readout="{where}">—</td>')
                continue
            rgb = heat_color(value, block.low, block.high)
            cells.append(
                f'<td style="background:rgb{rgb};color:{_text_color(rgb)}" data-value="{value!r}" title="{where}" '
                f'data-readout="{where}">{escape(text)}</td>'
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    low, high = format_value(block.low, block.format), format_value(block.high, block.format)
    scale = (f'<div class="heat-scale"><span>{escape(low)}</span><span class="heat-bar"></span>'
             f"<span>{escape(high)}</span></div>")
    caption = f'<p class="caption">{escape(block.caption)}</p>' if block.caption else ""
    return (
        f'<figure class="heatmap-figure" id="heatmap-{next(ids)}"><figcaption>{escape(block.title)}</figcaption>'
        f'<table class="heatmap"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{scale}{caption}'
        f'<output class="readout" aria-live="polite"></output></figure>'
    )


def _image_grid(block: ImageGrid, ids: itertools.count) -> str:
    head = '<th scope="col"></th>' + "".join(f'<th scope="col">{escape(c)}</th>' for c in block.columns)
    body = []
    for label, images in block.rows:
        cells = [f'<th scope="row">{escape(label)}</th>']
        for image in images:
            src = data_url(png_bytes(image_pixels(image)))
            cells.append(
                f'<td><figure class="sample"><img src="{src}" width="{IMAGE_DISPLAY_PX}" height="{IMAGE_DISPLAY_PX}" '
                f'alt="{escape(image.caption or label)}"><figcaption>{escape(image.caption)}</figcaption></figure></td>'
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f'<p class="caption">{escape(block.caption)}</p>' if block.caption else ""
    return (f'<figure class="image-grid" id="images-{next(ids)}"><figcaption>{escape(block.title)}</figcaption>'
            f'<table class="images"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{caption}</figure>')


def _findings(block: Findings) -> str:
    if not block.items:
        return '<p class="findings-summary">No sanity findings recorded.</p>'
    counts = {s: sum(1 for f in block.items if f.severity == s) for s in ("fail", "warning", "ok")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    items = "".join(
        f'<li class="finding sev-{escape(f.severity)}"><span class="sev">{escape(f.severity.upper())}</span> '
        f"<b>{escape(f.check)}</b>: {escape(f.message)}</li>"
        for f in sorted_findings(block.items)
    )
    return f'<p class="findings-summary">{escape(summary)}</p><ul class="findings">{items}</ul>'


def _block(block: Block, ids: itertools.count) -> str:
    if isinstance(block, Text):
        return "".join(f"<p>{escape(p)}</p>" for p in block.paragraphs)
    if isinstance(block, Table):
        return _table(block, ids)
    if isinstance(block, Curves):
        return _curves(block, ids)
    if isinstance(block, Heatmap):
        return _heatmap(block, ids)
    if isinstance(block, ImageGrid):
        return _image_grid(block, ids)
    if isinstance(block, Picture):
        return (f'<figure class="picture"><figcaption>{escape(block.title)}</figcaption>'
                f'<img src="{data_url(block.png)}" alt="{escape(block.title)}"></figure>')
    if isinstance(block, Findings):
        return _findings(block)
    if isinstance(block, Intervals):
        return f'<figure class="intervals-figure"><figcaption>{escape(block.title)}</figcaption>{intervals_svg(block)}</figure>'
    if isinstance(block, KeyValues):
        rows = "".join(f"<tr><th scope=\"row\">{escape(k)}</th><td>{escape(format_value(v))}</td></tr>" for k, v in block.items)
        return f'<table class="keyvalues"><tbody>{rows}</tbody></table>'
    raise TypeError(f"no HTML for {type(block).__name__}")


def render_html(page: Page) -> str:
    """The whole report.html for `page`."""
    ids = itertools.count(1)
    script = _asset("report.js")
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    nav = "".join(f'<li><a href="#{escape(s.id)}">{escape(s.title)}</a></li>' for s in page.sections)
    sections = "".join(
        f'<section id="{escape(s.id)}"><h2>{escape(s.title)}</h2>{"".join(_block(b, ids) for b in s.blocks)}</section>'
        for s in page.sections
    )
    subtitle = f'<p class="subtitle">{escape(page.subtitle)}</p>' if page.subtitle else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="redblue {escape(redblue.__version__)}">'
        f"<title>{escape(page.title)}</title><style>{_asset('report.css')}</style></head>"
        f'<body data-kind="{escape(page.kind)}"><header><h1>{escape(page.title)}</h1>{subtitle}'
        f'<nav><ul>{nav}</ul></nav></header><main>{sections}</main>'
        f"<footer>Generated by redblue {escape(redblue.__version__)} from this run's results.json; "
        f"no network access needed.</footer><script>{script}</script></body></html>\n"
    )
