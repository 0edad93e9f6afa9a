"""Progress reports and resuming: what the callback is told, and an interrupted evaluation finished later.

An interrupted run that is resumed must give the numbers of an uninterrupted run exactly (same seed,
same machine), reuse only rows of the same settings, and survive a damaged cell file.
"""

from __future__ import annotations

import json

import pytest
import torch
from mlp_fixtures import trained_mlp

from redblue.evaluate import Evaluation, Progress, evaluate
from redblue.evaluate.resume import CELLS, FolderRowCache

N = 100
# random starts (pgd) and random search (square): a resumed run matches only if the generator is restored
ATTACKS = "fgsm,pgd:steps=5,square:n_queries=20"
EPS = [0.05, 0.1]


@pytest.fixture(scope="module")
def mlp():
    model, x, y = trained_mlp()
    return model, x[:N], y[:N]


def numbers(result: Evaluation) -> str:
    """Everything the evaluation reports except wall times and the reuse count, as JSON."""
    data = result.to_dict()
    data.pop("seconds")
    data.pop("rows")
    for r in data["results"]:
        for a in r["attacks"]:
            a.pop("seconds")
    return json.dumps(data, sort_keys=True)


def run(mlp, *, mode="worst-case", seed=0, cache=None, progress=None, eps=EPS, batch_size=1024, checks=True):
    model, x, y = mlp
    return evaluate(model, x, y, ATTACKS, eps, mode=mode, batch_size=batch_size, certify_method=None, checks=checks,
                    check_subset=20, generator=torch.Generator().manual_seed(seed), cache=cache, progress=progress)


@pytest.mark.parametrize("mode", ["worst-case", "per-attack"])
def test_progress_reports_each_row_batch_by_batch(mlp, mode):
    events: list[Progress] = []
    result = run(mlp, mode=mode, progress=events.append, batch_size=16)
    attack_events = [e for e in events if e.stage == "attack"]
    assert [e.stage for e in events[len(attack_events):]] == ["checks"]
    clean_correct = int(result.clean_mask.sum())
    for unit, r in enumerate(result.results, start=1):
        robust = clean_correct
        for row_index, row in enumerate(r.attacks, start=1):
            here = [e for e in attack_events if (e.unit, e.row) == (unit, row_index)]
            assert {(e.units, e.rows, e.eps, e.attack, e.n) for e in here} == {(2, 3, r.eps, row.label, N)}
            assert all(e.total == row.n_attacked for e in here)
            # the cascade attacks what is still robust; per-attack mode attacks every sample
            assert row.n_attacked == (robust if mode == "worst-case" else N)
            # a start, one report per batch of 16, and the end, after the row is complete
            expected_done = [0] + [min(k, row.n_attacked) for k in range(16, row.n_attacked + 16, 16)] + [row.n_attacked]
            assert [e.done for e in here] == expected_done
            counts = [e.robust for e in here]
            assert counts[0] == robust and counts == sorted(counts, reverse=True)
            robust = int(r.worst_case_mask.sum()) if row_index == len(r.attacks) else counts[-1]
            if mode == "worst-case":  # cumulative rows: the count after the row is the row's accuracy
                assert counts[-1] == round(row.accuracy * N) == counts[-2]
            assert not any(e.reused for e in here)
        assert robust == round(r.worst_case_accuracy * N)


@pytest.mark.parametrize("stop_at", [2, 4], ids=["inside-the-first-eps", "at-the-second-eps"])
def test_an_interrupted_evaluation_resumes_with_identical_numbers(mlp, tmp_path, stop_at):
    uninterrupted = run(mlp)
    folder = FolderRowCache(tmp_path / "run")
    starts = []

    def interrupt(event: Progress) -> None:
        if event.stage == "attack" and event.done == 0 and not event.reused:
            starts.append((event.unit, event.row))
            if len(starts) == stop_at:  # the first report of a row: the rows before it are stored
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(mlp, cache=folder, progress=interrupt)
    assert len(list((tmp_path / "run" / CELLS).glob("*.json"))) == stop_at - 1
    reused_events: list[Progress] = []
    resumed = run(mlp, cache=folder, progress=reused_events.append)
    assert resumed.rows_reused == stop_at - 1
    assert sum(e.reused for e in reused_events) == stop_at - 1
    assert numbers(resumed) == numbers(uninterrupted)
    for fresh, again in zip(uninterrupted.results, resumed.results):
        assert torch.equal(fresh.worst_case_mask, again.worst_case_mask)
        for a, b in zip(fresh.attacks, again.attacks):
            assert torch.equal(a.robust_mask, b.robust_mask)
    # everything is stored now: a third run computes no attack row at all
    assert run(mlp, cache=folder).rows_reused == 6


def test_rows_of_other_settings_are_not_reused(mlp, tmp_path):
    cache = FolderRowCache(tmp_path / "run")
    run(mlp, cache=cache, checks=False)
    assert run(mlp, cache=cache, checks=False, seed=1).rows_reused == 0
    assert run(mlp, cache=cache, checks=False, batch_size=7).rows_reused == 0
    assert run(mlp, cache=cache, checks=False, mode="per-attack").rows_reused == 0
    # a later eps that changes: the rows of the first eps still hold, those after it do not
    assert run(mlp, cache=cache, checks=False, eps=[0.05, 0.2]).rows_reused == 3
    model, x, y = mlp
    other = torch.nn.Sequential(*[layer for layer in model])  # the same layers, one weight changed
    with torch.no_grad():
        before = other[1].weight[0, 0].item()
        other[1].weight[0, 0] += 1e-3
    try:
        result = evaluate(other, x, y, ATTACKS, EPS, certify_method=None, checks=False,
                          generator=torch.Generator().manual_seed(0), cache=cache)
    finally:
        with torch.no_grad():
            other[1].weight[0, 0] = before
    assert result.rows_reused == 0
    assert run(mlp, cache=cache, checks=False, progress=None).rows_reused == 6  # the original settings: all kept


def test_a_damaged_cell_is_computed_again(mlp, tmp_path):
    cache = FolderRowCache(tmp_path / "run")
    first = run(mlp, cache=cache, checks=False)
    cells = sorted((tmp_path / "run" / CELLS).glob("*.json"))
    cells[0].write_text("{ half a file")
    (tmp_path / "run" / "masks" / f"{cells[1].stem}.safetensors").write_bytes(b"not safetensors")
    again = run(mlp, cache=cache, checks=False)
    assert again.rows_reused == 4 and numbers(again) == numbers(first)
