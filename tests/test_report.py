"""Report pieces: the paper's transcribed values, paper | ours | difference tables, shape checks, PNGs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from redblue.errors import ConfigError
from redblue.report.figures import curves_figure, save_curves_png, save_figure_one_png
from redblue.report.markdown import render_markdown
from redblue.reproduce import Expectations
from redblue.reproduce.compare import clip_comparison, comparison_tables, shape_checks
from redblue.reproduce.paper import PAPER_VALUES, paper_models, paper_value

PAPER_TXT = Path(__file__).resolve().parents[1].parent / "shared" / "paper.txt"
GRID = (0.0, 1e-5, 1e-4)
EPS = (0.0, 0.05, 0.075, 0.1, 0.25, 0.3)


def _paper_text() -> str:
    if not PAPER_TXT.is_file():
        pytest.skip(f"{PAPER_TXT} is not beside this checkout")
    return PAPER_TXT.read_text()


def _parse_paper_tables(text: str) -> dict[tuple, float]:
    """Tables 1-3 read straight from paper.txt: {(l1, l2, metric, eps): value}."""
    values: dict[tuple, float] = {}
    table1 = {
        "Test Accuracy": ("accuracy", None),
        "Test Confidence": ("confidence", None),
        "Adversarial Accuracy for $\\epsilon = 0.10$": ("accuracy", 0.10),
        "Adversarial Confidence for $\\epsilon = 0.10$": ("confidence", 0.10),
        "Adversarial Accuracy for $\\epsilon = 0.25$": ("accuracy", 0.25),
        "Adversarial Confidence for $\\epsilon = 0.25$": ("confidence", 0.25),
    }
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0] in table1:
            metric, eps = table1[parts[0]]
            values[(0.0, 0.0, metric, eps)] = float(parts[1])
        elif len(parts) == 8 and all(re.fullmatch(r"[0-9.]+", p) for p in parts):
            l1, l2, *rest = map(float, parts)
            for (metric, eps), value in zip(
                [("accuracy", None), ("confidence", None), ("accuracy", 0.1), ("confidence", 0.1),
                 ("accuracy", 0.25), ("confidence", 0.25)],
                rest,
            ):
                values[(l1, l2, metric, eps)] = value
        else:
            match = re.fullmatch(r"Adversarial (Accuracy|Confidence) \(\$\\epsilon = ([0-9.]+)\$\)\t([0-9.]+)\t([0-9.]+)", line)
            if match:
                metric, eps = match.group(1).lower(), float(match.group(2))
                values[(1e-4, 1e-4, metric, eps)] = float(match.group(3))
                values[(0.0, 0.0, metric, eps)] = float(match.group(4))
    return values


def test_paper_values_match_paper_txt():
    parsed = _parse_paper_tables(_paper_text())
    assert len(parsed) == 9 * 6 + 8  # Tables 1 and 2: 9 models x 6 numbers; Table 3: 8 numbers
    ours = {(v.l1, v.l2, v.metric, v.eps): v.value for v in PAPER_VALUES}
    assert ours == parsed
    assert len(paper_models()) == 9 and set(paper_models()) == {(a, b) for a in GRID for b in GRID}


def _synthetic_results(accuracy_of, *, seeds: int = 1, grid=GRID, profile="full") -> dict:
    """A results dict shaped like results.json, with accuracy_of(l1, l2, eps, seed) chosen by the test."""
    models, cells = [], []
    for l1 in grid:
        for l2 in grid:
            curve = []
            for eps in EPS:
                acc = [accuracy_of(l1, l2, eps, s) for s in range(seeds)]
                conf = [0.9 - eps + 0.001 * s for s in range(seeds)]
                mean = lambda v: sum(v) / len(v)  # noqa: E731
                std = lambda v: (sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else None  # noqa: E731
                curve.append({
                    "eps": eps,
                    "accuracy": {"mean": mean(acc), "std": std(acc), "values": acc},
                    "confidence": {"mean": mean(conf), "std": std(conf), "values": conf},
                })
            models.append({"l1": l1, "l2": l2, "seeds": list(range(seeds)), "curve": curve,
                           "train_seconds": {"mean": 1.0, "std": None, "values": [1.0]}})
            for s in range(seeds):
                cells.append({"cell": f"l1-{l1:g}_l2-{l2:g}_seed-{s}", "id": f"{len(cells):016x}", "l1": l1, "l2": l2, "seed": s, "n_train": 60000,
                              "n_test": 10000, "train_seconds": 1.0,
                              "history": [{"epoch": e, "loss": 0.3, "accuracy": 0.9} for e in (1, 2, 3)],
                              "curve": [{"eps": p["eps"], "accuracy": p["accuracy"]["values"][s],
                                         "confidence": p["confidence"]["values"][s]} for p in curve]})
    results = {
        "experiment": {
            "name": "paper", "profile": profile, "dataset": "mnist", "seed": 0, "seeds": seeds,
            "train_subset": None, "test_subset": None, "chosen_l1": 1e-4, "chosen_l2": 1e-4,
            "model": {"hidden": 625, "dropout_input": 0.2, "dropout_hidden": 0.5, "bias": True, "in_features": 784,
                      "classes": 10, "init": "normal-0.01"},
            "train": {"epochs": 10, "batch_size": 128, "lr": 1e-3, "rho": 0.9, "rms_eps": 1e-6, "penalize_bias": False,
                      "optimizer": "rmsprop-newmu", "objective": {"name": "clean"}},
            "grid": {"l1": list(grid), "l2": list(grid)},
            "fgsm": {"clip": True, "curve_eps": list(EPS)},
            "notes": {"clip": "Clipping keeps images valid."},
            "expect": {"basis": "measured on three seeds of this profile, with margin."},
        },
        "profile": profile, "device": "cpu", "executor": "local", "workers": 2, "torch_threads_per_cell": 1,
        "wall_seconds": 12.5, "compute_wall_seconds": 12.5, "compute_invocations": 1, "invocations": 1,
        "cells_trained": [c["cell"] for c in cells], "cells_reused": [], "train_seconds_total": 9.0, "epochs_run": [3],
        "cells": cells, "models": models,
        "selection": {"paper": {"l1": 1e-4, "l2": 1e-4}, "ours": {"l1": 1e-4, "l2": 0.0, "eps": 0.1, "accuracy": 0.6},
                      "rule": "highest FGSM accuracy at eps 0.1"},
        "figure1": {"cell": "l1-0.0001_l2-0.0001_seed-0", "test_index": 0, "label": 7,
                    "panels": [{"eps": 0.0, "predicted": 7, "confidence": 0.99}, {"eps": 0.3, "predicted": 3, "confidence": 0.7}]},
        "files": {"figure1": "figure1.png", "curves": "curves.png"},
        "environment": {"versions": {"torch": "2.x"}, "platform": "test"},
    }
    results["tables"] = comparison_tables(results)
    results["checks"] = shape_checks(results, Expectations())
    return results


def _acc(l1, l2, eps, seed):
    return round(0.98 - 0.3 * eps - 0.5 * l1 - 0.02 * seed, 6)


def test_tables_put_ours_beside_every_paper_value_with_the_difference():
    results = _synthetic_results(_acc)
    tables = results["tables"]
    assert [len(tables[k]) for k in ("table1", "table2", "table3")] == [6, 48, 8]
    for row in tables["table1"] + tables["table2"] + tables["table3"]:
        eps = 0.0 if row["eps"] is None else row["eps"]
        expected = _acc(row["l1"], row["l2"], eps, 0) if row["metric"] == "accuracy" else 0.9 - eps
        assert row["ours"] == pytest.approx(expected)
        assert row["paper"] == paper_value(row["l1"], row["l2"], row["metric"], row["eps"]).value
        assert row["difference"] == pytest.approx(expected - row["paper"])


def test_report_markdown_holds_paper_ours_and_difference_for_every_paper_value():
    results = _synthetic_results(_acc)
    text = render_markdown(results)
    for heading in ("## Table 1", "## Table 2", "## Table 3", "## Protocol", "## Figure 1", "## Shape checks"):
        assert heading in text
    assert "This run: 12.5 s wall time, 9 cells trained, 0 reused" in text and "Clipping keeps images valid." in text
    # the epochs the cells ran (3, from their histories), not the 10 of the config's [train] table
    assert "Profile `full`, 3 epochs per model." in text and "batch 128, 3 epochs per model." in text
    table1 = text.split("## Table 1")[1].split("## Table 2")[0]
    # Table 1, from paper.txt: test accuracy 0.975; ours 0.98; difference +0.0050
    assert "| Test accuracy | 0.9750 | 0.9800 | +0.0050 |" in table1
    assert "| Adversarial accuracy (eps = 0.25) | 0.0048 | 0.9050 | +0.9002 |" in table1
    table2 = text.split("## Table 2")[1].split("## Table 3")[0]
    # row l1=0, l2=1e-4 at eps 0.1: paper 0.443 / 0.7584; ours 0.98 - 0.03 = 0.95 / 0.9 - 0.1 = 0.8
    assert "| 0 | 0.0001 | 0.4430 | 0.9500 | +0.5070 | 0.7584 | 0.8000 | +0.0416 |" in table2
    table3 = text.split("## Table 3")[1].split("## Choice")[0]
    # confidence at eps 0.05: ours 0.85 for both; paper 0.8579 with (1e-4, 1e-4), 0.8842 without
    assert "| Adversarial confidence (eps = 0.05) | 0.8579 | 0.8500 | -0.0079 | 0.8842 | 0.8500 | -0.0342 |" in table3
    assert "| Adversarial accuracy (eps = 0.05) | 0.8062 |" in table3 and "| 0.7850 | 0.9650 | +0.1800 |" in table3
    for value in PAPER_VALUES:
        assert f"{value.value:.4f}" in text


def test_a_rerun_that_reuses_every_cell_keeps_the_original_wall_time():
    results = _synthetic_results(_acc)
    results.update(wall_seconds=0.5, compute_wall_seconds=98.2, compute_invocations=2, invocations=3,
                   cells_reused=results["cells_trained"], cells_trained=[])
    text = render_markdown(results)
    assert "This run: 0.5 s wall time, 0 cells trained, 9 reused" in text
    assert "Computing the cells took 98.2 s of wall time over 2 runs." in text
    cells = text.split("## Cells")[1]
    assert cells.count("| reused |") == 9 and "`0000000000000008`" in cells


def test_shape_checks_say_whose_expectations_they_hold_the_run_to():
    text = render_markdown(_synthetic_results(_acc, profile="quick"))
    checks = text.split("## Shape checks")[1].split("## Figure 1")[0]
    assert "The ranges are the `quick` profile's expectations: measured on three seeds of this profile, with margin." in checks
    assert "Tables 1-3 above" in checks


def test_report_shows_mean_and_std_over_seeds():
    results = _synthetic_results(_acc, seeds=3)
    text = render_markdown(results)
    # seeds 0, 1, 2 at l1=l2=0, eps 0: 0.98, 0.96, 0.94 -> mean 0.96, sample std 0.02
    assert "| Test accuracy | 0.9750 | 0.9600 ± 0.0200 | -0.0150 |" in text
    assert "3 seeds per cell" in text


def test_rows_of_models_not_run_say_so():
    results = _synthetic_results(_acc, grid=(0.0,))
    text = render_markdown(results)
    assert "| 0.0001 | 0.0001 | 0.9695 | not run | — |" in text
    assert all(r["ours"] is None for r in results["tables"]["table2"])


def _paper_shaped(l1, l2, eps, seed):
    """Accuracy inside every acceptance range: l1 buys robustness, accuracy falls with eps."""
    at = {0.0: 0.975, 0.05: 0.78, 0.075: 0.55, 0.1: 0.33, 0.25: 0.01, 0.3: 0.0}
    bonus = {0.0: 0.0, 1e-5: 0.12, 1e-4: 0.25}[l1]
    return at[eps] if eps in (0.0, 0.25, 0.3) else min(at[eps] + bonus, 0.97)


def test_shape_checks_pass_on_paper_shaped_numbers_and_fail_where_they_break():
    results = _synthetic_results(_paper_shaped)
    by_name = {c["check"]: c for c in results["checks"]}
    failed = [c for c in results["checks"] if c["passed"] is not True]
    # the synthetic confidence is 0.9 at eps 0, outside 0.95-0.97: exactly the three l1=1e-4 rows fail
    assert sorted(c["check"] for c in failed) == sorted(f"clean confidence, l1=1e-4, l2={l2:g}" for l2 in GRID)
    assert by_name["FGSM accuracy at eps 0.1, no regularisation"]["value"] == pytest.approx(0.33)

    def rising(l1, l2, eps, seed):
        return 0.2 if (l1, l2, eps) == (0.0, 0.0, 0.3) else _paper_shaped(l1, l2, eps, seed)

    checks = {c["check"]: c for c in _synthetic_results(rising)["checks"]}
    never_rises = checks["FGSM accuracy never rises with eps, l1=0, l2=0"]
    assert never_rises["passed"] is False and "0.25->0.3" in never_rises["value"]


def test_shape_checks_use_the_ranges_they_are_given():
    results = _synthetic_results(_paper_shaped)
    # no regularisation at eps 0.1 is 0.33: inside the full range 0.20-0.42, outside a profile's 0.10-0.30
    narrow = Expectations(no_reg_fgsm=((0.10, 0.10, 0.30),), l1_clean_confidence=(0.85, 0.95))
    by_name = {c["check"]: c for c in shape_checks(results, narrow)}
    check = by_name["FGSM accuracy at eps 0.1, no regularisation"]
    assert (check["expected"], check["passed"]) == ("0.1-0.3", False)
    assert "FGSM accuracy at eps 0.05, no regularisation" not in by_name  # only the rows the profile lists
    assert by_name["clean confidence, l1=1e-4, l2=0"]["passed"] is True  # 0.9 is inside 0.85-0.95


def test_expectations_refuse_ranges_that_are_not_low_high():
    with pytest.raises(ConfigError, match=r"expect.clean_accuracy must be \[low, high\]"):
        Expectations(clean_accuracy=(0.99, 0.9))
    with pytest.raises(ConfigError, match=r"rows are \[eps, low, high\]"):
        Expectations(no_reg_fgsm=((0.1, 0.2),))


def test_shape_checks_of_models_not_run_are_not_judged():
    checks = _synthetic_results(_acc, grid=(0.0,))["checks"]
    assert all(c["passed"] is None for c in checks if "l1=1e-4" in c["check"] or "l1=1e-5" in c["check"])


def test_figures_are_png_images_of_the_expected_layout(tmp_path):
    from redblue.reproduce import FigureOne

    eps = (0.0, 0.1, 0.2)
    figure = FigureOne(test_index=0, label=7, cell="c", eps=eps, images=torch.rand(3, 28, 28) * 1.2 - 0.1,
                       predicted=(7, 7, 3), confidence=(0.99, 0.8, 0.6))
    save_figure_one_png(tmp_path / "figure1.png", figure)
    save_curves_png(tmp_path / "curves.png", _synthetic_results(_acc, seeds=2))
    for name in ("figure1.png", "curves.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(tmp_path / "figure1.png").shape
    assert width > 2 * height  # one row of panels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "figure1.png"]  # no temporary files


def test_curves_give_each_lambda1_a_colour_and_each_lambda2_a_line_style():
    figure = curves_figure(_synthetic_results(_acc, seeds=2))
    ax_accuracy, ax_confidence = figure.axes[:2]
    lines = [line for line in ax_accuracy.get_lines() if len(line.get_xdata()) == len(EPS)]
    assert len(lines) == 9  # one per grid model
    styles = {}
    for line, (l1, l2) in zip(lines, [(a, b) for a in GRID for b in GRID]):
        styles.setdefault(("color", l1), set()).add(line.get_color())
        styles.setdefault(("style", l2), set()).add(line.get_linestyle())
    assert all(len(v) == 1 for v in styles.values())  # one colour per l1, one style per l2
    assert len({next(iter(styles[("color", a)])) for a in GRID}) == 3
    assert len({next(iter(styles[("style", b)])) for b in GRID}) == 3
    # synthetic confidence is 0.9 - eps (+0.001 per seed): 0.6 to 0.9, so the axis starts near 0.57, not at 0
    bottom, top = ax_confidence.get_ylim()
    assert 0.5 < bottom < 0.6 and top == pytest.approx(1.01)
    assert ax_accuracy.get_ylim()[0] == 0.0


def test_clip_comparison_says_which_fgsm_the_paper_matches():
    results = _synthetic_results(_acc)
    for entry in results["models"]:  # unclipped: exactly the paper's values; clipped (the tables): _acc
        entry["other_clip"] = {"clip": False, "curve": [
            {"eps": eps, "accuracy": {"mean": paper_value(entry["l1"], entry["l2"], "accuracy", eps).value},
             "confidence": {"mean": 0.5}}
            for eps in (0.05, 0.075, 0.1, 0.25)
            if paper_value(entry["l1"], entry["l2"], "accuracy", eps) is not None
        ]}
    comparison = clip_comparison(results)
    assert comparison["tables_use"] == "clipped" and comparison["n_compared"] == 9 * 2 + 4
    assert comparison["mean_abs_difference"]["unclipped"] == 0.0
    expected = [abs(_acc(v.l1, v.l2, v.eps, 0) - v.value) for v in PAPER_VALUES if v.metric == "accuracy" and v.eps]
    assert comparison["mean_abs_difference"]["clipped"] == pytest.approx(sum(expected) / len(expected))
    results["clip_comparison"] = comparison
    assert "closer to unclipped FGSM" in render_markdown(results)
