"""The arena plays a defense given as the user's code and weights (`code = "MODULE:FACTORY"`, `weights`),
scores it as that code computes, fine-tunes it when red breaks it, and records what was judged."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch
from cli_helpers import one_error_line, run
from safetensors.torch import load_file, save_file

from redblue.attacks import fgsm
from redblue.data import load_dataset
from redblue.models.user import code_of, load_user_model

MODULE = "arena_user_nets"  # a name no other test imports
NETS = '''
from torch import nn

def mlp(hidden=24):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
'''
ARENA = f'''
name = "byo"
seed = 0
train_subset = 500
test_subset = 60
eps = [0.1]
rounds = 1
fine_tune_epochs = 1
threshold = 1.0               # red wins every defense that any image fools: the user's model is fine-tuned
leaderboard = "fgsm"

[budget]
max_eps = 0.1

[train]
batch_size = 100

[[blue]]
name = "mine"
code = "{MODULE}:mlp"
weights = "w.safetensors"

[[red]]
name = "fgsm"
attack = "fgsm"
'''


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(NETS)
    torch.manual_seed(0)
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 10))
    train = load_dataset("mnist", "train")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for start in range(0, 2000, 100):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x[start:start + 100]), train.y[start:start + 100]).backward()
        optimiser.step()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "byo.toml").write_text(ARENA)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def test_the_arena_scores_and_fine_tunes_the_users_model(user_folder, capsys):
    code, stdout, err = run(capsys, "arena", "byo.toml", "--out", user_folder / "runs" / "byo", "--workers", "1",
                            "--device", "cpu", "--json")
    assert code == 0, err
    results = json.loads(stdout)

    # round 0 is scored on the user's model exactly as the code and the weights compute it
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 10))
    model.load_state_dict(load_file(str(user_folder / "w.safetensors")))
    model.eval()
    test = load_dataset("mnist", "test")
    x, y = test.x[:60], test.y[:60]
    with torch.no_grad():
        clean_correct = model(x).argmax(dim=1) == y
    x_adv = fgsm(model, x, y, eps=0.1)
    with torch.no_grad():
        robust = (clean_correct & (model(x_adv).argmax(dim=1) == y)).double().mean().item()
    (first,) = [row for row in results["matrix"] if row["round"] == 0]
    assert first["robust_accuracy"] == pytest.approx(robust, abs=1e-12)
    assert robust < 1.0  # so red won, and blue fine-tuned the user's model

    # the fine-tuned model is the user's code with new weights, and names its code
    fine_tuned = results["final_models"]["mine"]
    assert not fine_tuned.startswith("code-") and len(results["trainings"]) == 1  # a fine-tune cell's model
    path = user_folder / "runs" / "byo" / "models" / f"{fine_tuned}.safetensors"
    assert code_of(path) == f"{MODULE}:mlp"
    tuned = load_user_model(f"{MODULE}:mlp", path).model
    assert not torch.equal(tuned[1].weight, model[1].weight)

    (blue,) = results["blue"]
    assert blue["code"] == f"{MODULE}:mlp" and blue["model"] is None
    sha = hashlib.sha256
    assert blue["model_code"]["weights_sha256"] == sha((user_folder / "w.safetensors").read_bytes()).hexdigest()
    assert blue["model_code"]["module_sha256"] == sha((user_folder / f"{MODULE}.py").read_bytes()).hexdigest()
    assert results["config"]["blue"][0]["weights_sha256"] == blue["model_code"]["weights_sha256"]

    code, stdout, err = run(capsys, "leaderboard", "--root", user_folder / "runs", "--json")
    assert code == 0, err
    assert [row["model"] for row in json.loads(stdout)["rows"]] == ["byo/mine (round 1)"]


@pytest.mark.parametrize(("blue", "says"), [
    ('code = "arena_user_nets:mlp"\nfile = "w.safetensors"', "blue mine: give a model file or code, not both"),
    ('model = "mlp"\nweights = "w.safetensors"', "blue mine: weights go with code"),
    ('code = "arena_user_nets"', "must be MODULE:FACTORY"),
    ('code = "arena_user_nets:nope"\nweights = "w.safetensors"', "defines no 'nope'"),
])
def test_a_bad_code_defense_is_one_line_before_any_cell(blue, says, user_folder, capsys):
    (user_folder / "bad.toml").write_text(ARENA.replace(f'code = "{MODULE}:mlp"\nweights = "w.safetensors"', blue))
    code, _, err = run(capsys, "arena", "bad.toml", "--out", user_folder / "bad", "--workers", "1", "--device", "cpu")
    assert code == 2 and says in one_error_line(err), err
    assert not (user_folder / "bad").exists()
