"""`redblue train`: one JSON result, a safetensors file with its exact run record, one-line errors."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch
from cli_helpers import one_error_line, run

from redblue.data import load_dataset
from redblue.metrics import score
from redblue.models import MLPSpec, load_model

# --threads 1: the in-process CLI sets torch's thread count for the whole test worker
TINY = ("--model", "mlp:hidden=16,init=normal-0.01", "--train-subset", "600", "--epochs", "2", "--device", "cpu", "--threads", "1")


def test_train_json_saves_the_model_with_its_exact_config_seed_versions_and_device(tmp_path, capsys):
    out_path = tmp_path / "runs" / "m.safetensors"
    code, out, err = run(
        capsys, "train", *TINY, "--l1", "1e-4", "--l2", "1e-5", "--objective", "fgsm:eps=0.1,alpha=0.5,clip=false",
        "--seed", "3", "--lr", "0.002", "--out", str(out_path), "--json",
    )
    assert code == 0, err
    assert err == ""  # no progress bar when output is not a terminal
    result = json.loads(out)
    assert out.count("\n") == 1
    config = result["train_config"]
    assert (config["l1"], config["l2"], config["epochs"], config["lr"], config["seed"]) == (1e-4, 1e-5, 2, 0.002, 3)
    assert config["objective"] == {"name": "fgsm", "eps": 0.1, "alpha": 0.5, "clip": False}
    assert result["seed"] == 3 and result["device"] == "cpu" and result["n_train"] == 600
    assert set(result["versions"]) >= {"redblue", "torch", "python"}
    assert result["versions"]["torch"] == torch.__version__
    assert [row["epoch"] for row in result["history"]] == [1, 2]

    loaded = load_model(out_path)
    assert loaded.spec == MLPSpec(hidden=16, init="normal-0.01")
    assert loaded.record["train_config"] == config and loaded.record["seed"] == 3
    # the reported test metrics are those of the saved weights, recomputed here
    test = load_dataset("mnist", "test")
    scores = score(loaded.model, test.x, test.y)
    assert result["test"]["accuracy"] == pytest.approx(scores.accuracy, abs=1e-12)
    assert result["test"]["confidence"] == pytest.approx(scores.confidence, abs=1e-9)


def test_same_seed_gives_the_same_weights_and_human_output_names_the_file(tmp_path, capsys):
    paths = [tmp_path / f"m{i}.safetensors" for i in range(2)]
    code, out, err = run(capsys, "train", *TINY, "--epochs", "1", "--seed", "5", "--out", str(paths[0]))
    assert code == 0, err
    assert "test accuracy" in out and str(paths[0]) in out
    code, _, err = run(capsys, "train", *TINY, "--epochs", "1", "--seed", "5", "--out", str(paths[1]), "--json")
    assert code == 0, err
    first, second = (load_model(p).model.state_dict() for p in paths)
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--l1", "-0.0001"), "--l1 must be >= 0"),
        (("--l2", "-1"), "--l2 must be >= 0"),
        (("--model", "resnet"), "unknown model 'resnet'"),
        (("--model", "mlp:width=3"), "width"),
        (("--objective", "madry"), "unknown objective 'madry'"),
        (("--objective", "fgsm:eps=2"), "eps must be in"),
        (("--optimizer", "lbfgs"), "unknown optimizer 'lbfgs'; choose one of: auto, sgd, adam, adamw, rmsprop-newmu, rmsprop"),
        (("--epochs", "-1"), "--epochs must be an integer >= 1"),
        (("--epochs", "0"), "--epochs must be an integer >= 1, got 0"),
        (("--schedule", "warm"), "unknown schedule 'warm'; choose one of: constant, piecewise, cosine, one-cycle"),
        (("--schedule", "piecewise:milestones=1,gamma=0.1"), "schedule 'piecewise' has no parameter gamma; valid: milestones, factor"),
        (("--objective", "pgd:eps=0.1", "--eps-warmup-epochs", "3"), "--eps-warmup-epochs (3) is longer than the run (2 epochs)"),
        (("--eps-warmup-epochs", "1"), "--eps-warmup-epochs needs an adversarial objective"),
        (("--objective", "ibp:eps=0.1", "--clean-epochs", "-1"), "--clean-epochs must be >= 0"),
        (("--objective", "ibp:eps=0.1", "--clean-epochs", "1.5", "--eps-warmup-epochs", "1"),
         "--clean-epochs (1.5) and --eps-warmup-epochs (1) together are longer than the run (2 epochs)"),
        (("--objective", "crown-ibp:eps=0.1", "--clean-epochs", "3"), "--clean-epochs (3) is longer than the run (2 epochs)"),
        (("--clean-epochs", "1"), "--clean-epochs needs an adversarial objective"),
        (("--objective", "pgd:eps=0.1", "--val-size", "600"), "--val-size 600 leaves nothing to train on: the training set has 600 images; lower --val-size"),
        (("--objective", "pgd:eps=0.1", "--momentum", "0.9"), "--momentum applies to sgd, rmsprop, not to adam, the default optimizer"),
        (("--optimizer", "sgd", "--momentum", "0", "--nesterov"), "nesterov needs momentum > 0"),
        (("--grad-clip", "-1"), "--grad-clip must be > 0"),
        (("--weight-average", "1"), "--weight-average must be in [0.0, 0.999999], got 1.0"),
        (("--keep", "best"), "--keep=best needs a validation split"),
        (("--objective", "pgd:eps=0.1,alpha=0.9"), "objective 'pgd' has no parameter alpha"),
        (("--threads", "0"), "--threads must be auto or an integer >= 1"),
        (("--lr", "0"), "--lr must be > 0"),
        (("--batch-size", "0"), "--batch-size must be an integer >= 1, got 0"),
        (("--objective", "ibp:eps=0.1", "--overfit-guard"), "--overfit-guard watches attacks that learn to mask themselves"),
        (("--dataset", "cifar"), "cifar"),
        (("--train-subset", "0"), "--train-subset must be >= 1"),
        (("--device", "tpu"), "unknown device 'tpu'"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    out_path = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", *TINY, *args, "--out", str(out_path))
    assert code == 2 and out == ""
    assert message in one_error_line(err)
    assert not out_path.exists()


def test_out_that_is_a_folder_is_refused_before_training(tmp_path, capsys):
    code, out, err = run(capsys, "train", *TINY, "--out", str(tmp_path))
    assert code == 2 and "is a directory" in one_error_line(err)


def test_an_unwritable_out_is_found_before_the_data_is_even_read(tmp_path, capsys):
    # the data folder does not exist: had training started, the error would name the data
    code, out, err = run(capsys, "train", *TINY, "--data-dir", str(tmp_path / "nowhere"), "--out", "/proc/redblue/m.safetensors")
    assert code == 2 and out == ""
    assert "cannot write --out /proc/redblue/m.safetensors: /proc is not writable" in one_error_line(err)


def test_missing_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REDBLUE_DATA_DIR", raising=False)
    code, out, err = run(capsys, "train", *TINY, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.st"))
    assert code == 2 and "mnist" in one_error_line(err)


# ---- validation, resume, Ctrl-C, progress bar, threads -------------------------------------------

ADVERSARIAL = (*TINY, "--objective", "pgd:eps=0.1,steps=2", "--val-size", "100", "--epochs", "5")


def test_json_has_the_history_the_kept_epoch_and_the_validation_settings(tmp_path, capsys):
    out_path = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", *ADVERSARIAL, "--epochs", "3", "--out", out_path, "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    history = result["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert set(history[0]) >= {"loss", "accuracy", "val_accuracy", "val_robust_accuracy", "lr", "eps", "seconds"}
    best = max(history, key=lambda row: row["val_robust_accuracy"])["epoch"]
    assert result["kept_epoch"] == best and result["train_config"]["keep"] == "best"
    assert result["train_config"]["optimizer"] == "adam" and result["train_config"]["schedule"] == {"name": "one-cycle", "peak": 0.4}
    assert result["validation"]["size"] == 100 and result["validation"]["pgd_steps"] == 10
    assert result["n_train"] == 600 and result["torch_threads"] == 1
    assert load_model(out_path).record["history"] == history
    assert not (tmp_path / "m.safetensors.checkpoint").exists()  # removed once the model is saved


def test_clean_epochs_train_cleanly_before_the_ramp_and_are_recorded(tmp_path, capsys):
    out_path = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", *TINY, "--objective", "ibp:eps=0.1", "--val-size", "100", "--clean-epochs", "1",
                         "--eps-warmup-epochs", "1", "--out", out_path, "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert (result["train_config"]["clean_epochs"], result["train_config"]["eps_warmup_epochs"]) == (1.0, 1.0)
    first, second = result["history"]  # 4 batches per epoch: epoch 1 clean, the ramp over epoch 2's 4 batches
    assert (first["eps"], first["train_eps"], first["kappa"]) == (0.0, 0.0, 1.0)
    assert (second["eps"], second["train_eps"], second["kappa"]) == pytest.approx((0.1, 0.1 * 4 / 3, 0.5))
    assert load_model(out_path).record["train_config"] == result["train_config"]


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C the moment `epoch`'s checkpoint is written (before the loop reports the epoch)."""
    import redblue.train.state as train_state

    real = train_state.write_checkpoint

    def write_then_interrupt(folder, *, epoch: int, **kwargs):
        real(folder, epoch=epoch, **kwargs)
        if epoch == stop_at:
            raise KeyboardInterrupt

    stop_at = epoch
    monkeypatch.setattr(train_state, "write_checkpoint", write_then_interrupt)


def test_ctrl_c_after_epoch_2_then_resume_gives_the_uninterrupted_model(tmp_path, capsys, monkeypatch):
    whole, parts = tmp_path / "whole.safetensors", tmp_path / "parts.safetensors"
    code, _, err = run(capsys, "train", *ADVERSARIAL, "--out", whole, "--json")
    assert code == 0, err
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 2)
        code, out, err = run(capsys, "train", *ADVERSARIAL, "--out", parts)
    assert code == 130 and out == ""
    assert err == (
        f"interrupted; the first 2 of 5 epochs are checkpointed in {parts}.checkpoint; "
        "rerun the same command with --resume to continue\n"
    )
    assert not parts.exists()
    code, out, err = run(capsys, "train", *ADVERSARIAL, "--out", parts)  # forgot --resume
    assert code == 2 and "holds a checkpoint of an unfinished run; add --resume" in one_error_line(err)
    code, out, err = run(capsys, "train", *ADVERSARIAL, "--lr", "0.002", "--out", parts, "--resume")
    assert code == 2 and "made by a different run (differs in: config.lr)" in one_error_line(err)
    code, out, err = run(capsys, "train", *ADVERSARIAL, "--out", parts, "--resume", "--json")
    assert code == 0, err
    assert json.loads(out)["resumed_from"] == 2
    first, second = load_model(whole), load_model(parts)
    assert all(torch.equal(first.model.state_dict()[k], v) for k, v in second.model.state_dict().items())
    assert first.record["kept_epoch"] == second.record["kept_epoch"]
    code, out, err = run(capsys, "train", *ADVERSARIAL, "--out", parts, "--resume")
    assert code == 2 and "--resume: there is no checkpoint in" in one_error_line(err)


def test_a_resume_under_another_load_keeps_the_recorded_thread_count_and_ends_as_the_uninterrupted_run(tmp_path, capsys, monkeypatch):
    """--threads auto takes the idle cores; a run resumed after the machine's load changed takes the
    count its checkpoint recorded instead, so it ends bit for bit where the uninterrupted run ends."""
    import redblue.cli.verbs_train as verbs

    app = importlib.import_module("redblue.cli.app")  # the module (redblue.cli.app is also the Typer app's name)
    auto = [a if a != "1" or TINY[i - 1] != "--threads" else "auto" for i, a in enumerate(TINY)]
    whole, parts, other = (tmp_path / f"{name}.safetensors" for name in ("whole", "parts", "other"))
    monkeypatch.setattr(app, "idle_cores", lambda: 1)  # a busy machine: auto is one thread
    code, out, err = run(capsys, "train", *auto, "--out", whole, "--json")
    assert code == 0, err
    assert json.loads(out)["torch_threads"] == 1
    for path in (parts, other):
        with monkeypatch.context() as patch:
            interrupt_after_epoch(patch, 1)
            assert run(capsys, "train", *auto, "--out", path)[0] == 130
    monkeypatch.setattr(app, "idle_cores", lambda: 2)  # quiet now: a fresh auto run would take two
    threads_seen = []
    real_train = verbs.train

    def counting_train(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(verbs, "train", counting_train)
    code, out, err = run(capsys, "train", *auto, "--out", parts, "--resume", "--json")
    assert code == 0, err
    assert json.loads(out)["torch_threads"] == 1 and threads_seen == [1] and json.loads(out)["resumed_from"] == 1
    first, second = load_model(whole).model.state_dict(), load_model(parts).model.state_dict()
    assert all(torch.equal(first[k], v) for k, v in second.items())
    # an explicit count other than the recorded one is refused, in one line, and the checkpoint kept
    code, _, err = run(capsys, "train", *TINY[:-1], "2", "--out", other, "--resume")
    assert code == 2 and "was made with 1 torch threads and this run has 2; resume with the same thread count" in one_error_line(err)
    assert (tmp_path / "other.safetensors.checkpoint").is_dir() and not other.exists()


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    import redblue.cli.verbs_train as verbs

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verbs, "train", interrupt)
    code, out, err = run(capsys, "train", *TINY, "--out", tmp_path / "m.safetensors")
    assert code == 130 and err == "interrupted before the first epoch finished; nothing was saved\n"


@pytest.mark.slow
def test_sigint_in_a_real_process_then_resume(tmp_path, capsys):
    """A real `redblue train` process gets SIGINT once epoch 2 is checkpointed; `--resume` finishes it
    with the weights of an uninterrupted run (6000 images of PGD training make epochs last ~1 s)."""
    import signal
    import subprocess
    import sys
    import time

    args = ("--model", "mlp:hidden=32", "--train-subset", "6000", "--objective", "pgd:eps=0.1,steps=3",
            "--epochs", "5", "--device", "cpu", "--threads", "1")  # fmt: skip
    parts, whole = tmp_path / "parts.safetensors", tmp_path / "whole.safetensors"
    process = subprocess.Popen(
        [sys.executable, "-m", "redblue", "train", *args, "--out", str(parts)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = tmp_path / "parts.safetensors.checkpoint" / "state.json"
    deadline = time.monotonic() + 300
    while not (state.is_file() and '"epoch": 2,' in state.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    # the line is read from the checkpoint when the signal lands: 2 epochs, or 3 if epoch 3 ended first
    assert err in [f"interrupted; the first {k} of 5 epochs are checkpointed in {parts}.checkpoint; "
                   "rerun the same command with --resume to continue\n" for k in (2, 3)]  # fmt: skip
    assert not parts.exists()
    code, _, err = run(capsys, "train", *args, "--out", parts, "--resume")
    assert code == 0, err
    code, _, err = run(capsys, "train", *args, "--out", whole)
    assert code == 0, err
    first, second = load_model(whole).model.state_dict(), load_model(parts).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_bar_is_drawn_on_a_terminal_only_and_never_with_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, "train", *TINY, "--out", tmp_path / "a.safetensors")
    assert code == 0
    assert "train epoch" in err  # drawn on stderr ...
    assert "train epoch" not in out and "test accuracy" in out  # ... never on stdout
    code, out, err = run(capsys, "train", *TINY, "--out", tmp_path / "b.safetensors", "--json")
    assert code == 0 and err == ""  # --json: nothing extra, even on a terminal
    json.loads(out)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    code, out, err = run(capsys, "train", *TINY, "--out", tmp_path / "c.safetensors")
    assert code == 0 and err == ""


def test_threads_sets_torchs_thread_count_and_is_recorded(tmp_path, capsys):
    # (conftest puts the count back to 1 after the test)
    code, out, _ = run(capsys, "train", *TINY, "--threads", "2", "--out", tmp_path / "m.safetensors", "--json")
    assert code == 0 and json.loads(out)["torch_threads"] == 2 and torch.get_num_threads() == 2


def test_help_lists_every_registered_objective_by_kind_and_every_model(capsys, monkeypatch):
    from redblue.defenses import OBJECTIVES
    from redblue.models import MODELS

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapping inside the names
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    objective_line = next(line for line in out.splitlines() if "--objective" in line)
    model_line = next(line for line in out.splitlines() if "--model" in line)
    groups = "clean: clean; single-step: fgsm, fast-fgsm; multi-step: pgd, trades, mart; certified: ibp, crown-ibp."
    assert groups in objective_line and set(OBJECTIVES) == {"clean", "fgsm", "fast-fgsm", "pgd", "trades", "mart", "ibp", "crown-ibp"}
    assert "mlp, cnn-small, cnn, cnn-large, preact-resnet18, cnn-7 (`redblue models`)" in model_line and len(MODELS) == 6
    assert "or cnn." not in out
