"""The rendered files of a reproduce run: report.md, figure1.png and curves.png, from what `reproduce` returned."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from redblue.config import atomic_write_bytes
from redblue.report.figures import save_curves_png, save_figure_one_png
from redblue.report.markdown import render_markdown
from redblue.reproduce import FigureOne


def write_reproduce_report(folder: str | os.PathLike[str], results: dict[str, Any], figure: FigureOne) -> dict[str, Path]:
    """Write figure1.png, curves.png and report.md into the run folder (names from results["files"]); returns their paths."""
    root = Path(folder)
    files = results["files"]
    paths = {key: root / files[key] for key in ("figure1", "curves", "report")}
    save_figure_one_png(paths["figure1"], figure)
    save_curves_png(paths["curves"], results)
    atomic_write_bytes(paths["report"], render_markdown(results).encode())
    return paths
