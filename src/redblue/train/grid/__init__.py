"""Batched grids: many MLPs that differ only in l1, l2 and seed, trained (`loop`, `step`) and scored
(`score`) as one stacked model (`model`), each member equal to one-by-one training on a CPU.
"""

from redblue.train.grid.loop import GridResult, grid_refusal, train_grid

__all__ = ["GridResult", "grid_refusal", "train_grid"]
