"""Reports of runs: the paper's values, paper-versus-ours tables, report.md and PNG figures."""

from redblue.report.figures import save_curves_png, save_figure_one_png
from redblue.report.markdown import render_markdown
from redblue.report.tables import comparison_tables, shape_checks

__all__ = ["comparison_tables", "render_markdown", "save_curves_png", "save_figure_one_png", "shape_checks"]
