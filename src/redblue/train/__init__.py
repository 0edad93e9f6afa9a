"""The blue team's training (engine layer): the loop (`loop`), its config (`config`), optimisers and
schedules (`optim`), validation and the overfitting guard (`validation`), per-epoch checkpoints for
exact resume (`checkpoint`, `state`), and batched grids of MLPs that differ only in l1, l2 and seed
(`redblue.train.grid`).

    from redblue.train import TrainConfig, init_model, train
    result = train(model, x, y, TrainConfig(epochs=5))   # trains in place; progress through a callback
"""

from redblue.train.config import TrainConfig
from redblue.train.loop import GuardReport, TrainProgress, TrainResult, config_record, init_model, make_optimizer, train
from redblue.train.optim import NewmuRMSprop

__all__ = ["GuardReport", "NewmuRMSprop", "TrainConfig", "TrainProgress", "TrainResult", "config_record", "init_model",
           "make_optimizer", "train"]
