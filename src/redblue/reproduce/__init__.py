"""The paper's experiment as data, run as cells on the sweep engine: train the (lambda1, lambda2) grid, FGSM every model.

`experiment` reads `experiments/paper.toml` (profiles `quick` and `full`); `cell` trains and scores
one (lambda1, lambda2, seed) model, or several as one batched grid (`run_cells`, `batch_key`); `run` drives the grid through `redblue.sweep` into a run
folder and returns the results (`results` builds them, `compare` sets them beside the paper's).
Rendering (report.md, figure1.png, curves.png) is `redblue.report`'s.
"""

from redblue.reproduce.cell import (
    CellConfig, CurvePoint, batch_key, fgsm_curve, fgsm_scores, run_cell, run_cells, score_cell, train_cell,
)
from redblue.reproduce.experiment import PAPER_TOML, Expectations, Experiment, FGSMSettings, GridConfig, Notes, load_experiment
from redblue.reproduce.results import FigureOne, aggregate, figure_one
from redblue.reproduce.run import FILES, ReproduceResult, grid_cells, reproduce

__all__ = [
    "FILES", "PAPER_TOML", "CellConfig", "CurvePoint", "Expectations", "Experiment", "FGSMSettings", "FigureOne",
    "GridConfig", "Notes", "ReproduceResult", "aggregate", "batch_key", "fgsm_curve", "fgsm_scores", "figure_one", "grid_cells",
    "load_experiment", "reproduce", "run_cell", "run_cells", "score_cell", "train_cell",
]
