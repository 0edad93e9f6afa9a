"""A report as data: a Page of Sections of blocks (tables, curves, heatmaps, image grids, findings...).

Page builders (`redblue.report.pages`) turn a run's results.json into a Page; renderers turn a
Page into report.html (`redblue.report.html`) or Markdown (`page_markdown` here). A new kind of
run (the arena) adds a builder that composes these blocks; the renderers need no change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

Scalar = Union[str, int, float, bool, None]


@dataclass(frozen=True)
class Text:
    """Paragraphs of plain text (no markup)."""

    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """Rows of scalars; `formats` per column: a format spec such as ".4f" or "%" (percent), or "" for str().

    `rows` keep their raw values: the HTML table sorts on them, not on the formatted text.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Scalar, ...], ...]
    formats: tuple[str, ...] = ()
    caption: str = ""  # a note under the table
    sortable: bool = True
    title: str = ""


@dataclass(frozen=True)
class Series:
    """One line of a Curves block: y per x (None: no point); `band` an optional (low, high) per x; `markers_only`
    draws points without a line (reference values such as the paper's)."""

    name: str
    y: tuple[float | None, ...]
    band: tuple[tuple[float, float] | None, ...] | None = None
    dashed: bool = False
    markers_only: bool = False


@dataclass(frozen=True)
class Curves:
    """Several series over one x axis (eps), read by hovering or with a slider."""

    title: str
    x: tuple[float, ...]
    series: tuple[Series, ...]
    x_label: str = "eps"
    y_label: str = "accuracy"
    y_range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class Heatmap:
    """values[i][j] for row i and column j (None: not run), coloured from `low` (red) to `high` (blue)."""

    title: str
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]
    row_header: str = ""
    col_header: str = ""
    format: str = ".1%"
    low: float = 0.0
    high: float = 1.0
    caption: str = ""


@dataclass(frozen=True)
class Image:
    """One small image: `pixels` (H, W), or (H, W, 3) RGB with the "gray" scale; `scale` "gray" maps
    [0, 1] to black..white (each channel), "signed" maps [-1, 1] of an (H, W) image to red..white..blue
    (a perturbation divided by eps)."""

    pixels: np.ndarray
    caption: str = ""
    scale: str = "gray"


@dataclass(frozen=True)
class ImageGrid:
    """Rows of images (one row per sample), with a header per column (clean, adversarial, perturbation)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Image, ...]], ...]
    caption: str = ""


@dataclass(frozen=True)
class Picture:
    """A PNG the run saved (e.g. figure1.png), shown inline; `path` is its name in the run folder."""

    title: str
    png: bytes
    path: str


@dataclass(frozen=True)
class Finding:
    severity: str  # ok | warning | fail
    check: str
    message: str


@dataclass(frozen=True)
class Findings:
    """Sanity-check findings with their severity, worst first."""

    items: tuple[Finding, ...]


@dataclass(frozen=True)
class Intervals:
    """Per row, where a true value lies: [low, high] (certified lower bound, empirical upper bound)."""

    title: str
    rows: tuple[tuple[str, float | None, float | None], ...]
    low_label: str = "certified"
    high_label: str = "empirical worst case"


@dataclass(frozen=True)
class KeyValues:
    """Name: value pairs (settings, environment)."""

    items: tuple[tuple[str, Scalar], ...]


Block = Union[Text, Table, Curves, Heatmap, ImageGrid, Picture, Findings, Intervals, KeyValues]


@dataclass(frozen=True)
class Section:
    id: str  # an HTML id: letters, digits, -
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Page:
    title: str
    kind: str
    sections: tuple[Section, ...]
    subtitle: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


SEVERITY_ORDER = ("fail", "warning", "ok")


def sorted_findings(items: Sequence[Finding]) -> list[Finding]:
    return sorted(items, key=lambda f: SEVERITY_ORDER.index(f.severity) if f.severity in SEVERITY_ORDER else 0)


def format_value(value: Scalar, spec: str = "") -> str:
    """`value` as a table shows it: None as an em dash, percent with "%", floats with the spec."""
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, str)) or not spec:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)
    if spec == "%":
        return f"{value:.2%}"
    return format(value, spec)


# --- Markdown -----------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _block_markdown(block: Block) -> list[str]:
    if isinstance(block, Text):
        return [line for p in block.paragraphs for line in (p, "")]
    if isinstance(block, Table):
        formats = block.formats or ("",) * len(block.columns)
        body = [[format_value(v, f) for v, f in zip(row, formats)] for row in block.rows]
        title = [f"**{block.title}**", ""] if block.title else []
        note = [f"*{block.caption}*", ""] if block.caption else []
        return title + _md_table(block.columns, body) + [""] + note
    if isinstance(block, Curves):
        body = [[s.name] + [format_value(v, ".4f") for v in s.y] for s in block.series]
        return [f"**{block.title}**", ""] + _md_table(
            [""] + [f"{x:g}" for x in block.x], body) + [""]
    if isinstance(block, Heatmap):
        body = [[label] + [format_value(v, block.format) for v in row] for label, row in zip(block.row_labels, block.values)]
        header = [f"{block.row_header} \\ {block.col_header}".strip(" \\")] + list(block.col_labels)
        return [f"**{block.title}**", ""] + _md_table(header, body) + [""]
    if isinstance(block, ImageGrid):
        return [f"**{block.title}**: {len(block.rows)} samples, shown in report.html.", ""]
    if isinstance(block, Picture):
        return [f"![{block.title}]({block.path})", ""]
    if isinstance(block, Findings):
        return [f"- **{f.severity}** {f.check}: {f.message}" for f in sorted_findings(block.items)] + [""]
    if isinstance(block, Intervals):
        body = [[label, format_value(low, "%"), format_value(high, "%")] for label, low, high in block.rows]
        return [f"**{block.title}**", ""] + _md_table(["", block.low_label, block.high_label], body) + [""]
    if isinstance(block, KeyValues):
        return [f"- {key}: {format_value(value)}" for key, value in block.items] + [""]
    raise TypeError(f"no Markdown for {type(block).__name__}")


def page_markdown(page: Page) -> str:
    """The page as Markdown (report.md of runs other than reproduce, whose report.md is its own)."""
    lines = [f"# {page.title}", ""]
    if page.subtitle:
        lines += [page.subtitle, ""]
    for section in page.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _block_markdown(block)
    return "\n".join(lines).rstrip() + "\n"
