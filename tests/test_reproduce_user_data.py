"""The paper's cells on a user dataset: the experiment accepts its path, the grid trainer learns its
size from the file, a cell trains and scores when the MLP fits the images, and a model that does
not fit is one ModelError line before any training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from redblue.errors import ModelError, RedblueError
from redblue.models import MLPSpec
from redblue.reproduce.cell import CellConfig, batch_key, run_cell
from redblue.reproduce.experiment import Experiment
from redblue.train import TrainConfig


@pytest.fixture
def rgb_npz(tmp_path) -> str:
    gen = np.random.default_rng(0)
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=gen.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8), y_train=np.arange(40) % 4,
             x_test=gen.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8), y_test=np.arange(12) % 4)
    return str(path)


def cell(dataset: str, model: MLPSpec) -> CellConfig:
    return CellConfig(dataset=dataset, model=model, train=TrainConfig(epochs=1, batch_size=8), clip=True,
                      eps=(0.0, 0.1), other_clip_eps=(0.1,))


def test_the_experiment_accepts_a_user_dataset_path(rgb_npz):
    assert Experiment(train=TrainConfig(epochs=1), dataset=rgb_npz).dataset == rgb_npz
    with pytest.raises(RedblueError, match="svhn"):  # a name that is neither in the catalog nor a path
        Experiment(train=TrainConfig(epochs=1), dataset="svhn")


def test_a_cell_on_a_user_dataset_trains_scores_and_batches_by_the_file_s_size(rgb_npz):
    config = cell(rgb_npz, MLPSpec(hidden=8, in_features=3 * 6 * 5, classes=4))
    # the grid trainer sizes its batches from the file (40 images): cells differing only in seed share a key
    reseeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=3))
    assert batch_key(config) is not None and batch_key(config) == batch_key(reseeded)
    output = run_cell(config)
    assert output.metrics["n_train"] == 40 and output.metrics["n_test"] == 12
    assert [point["eps"] for point in output.metrics["curve"]] == [0.0, 0.1]


def test_a_model_that_does_not_fit_the_user_dataset_is_one_error_line(rgb_npz):
    with pytest.raises(ModelError, match=r"has images of shape 3x6x5 but the model \(mlp:hidden=8\) reads 784 pixels"):
        run_cell(cell(rgb_npz, MLPSpec(hidden=8)))
