"""experiments/arena-quick.toml played in full (slow: minutes on 2 cores; `make test-slow`): its scoreboard shows
red's success falling after blue's first adversarial fine-tuning, and every defense is ranked."""

from __future__ import annotations

import pytest

from redblue.arena import ARENA_QUICK, arena, load_arena


def test_the_packaged_quick_arena_is_the_experiments_folders():
    from pathlib import Path

    assert (Path(__file__).resolve().parents[1] / "experiments" / "arena-quick.toml").resolve() == ARENA_QUICK
    config = load_arena(ARENA_QUICK)
    assert [b.name for b in config.blue] == ["mlp-clean", "mlp-l1", "mlp-fgsm-at", "mlp-pgd-at"]
    assert [r.name for r in config.red] == ["fgsm", "pgd", "apgd-ce", "square", "transfer"]
    assert (config.budget.knowledge, config.budget.max_eps, config.rounds) == ("white-box", 0.1, 3)


@pytest.mark.slow
def test_arena_quick_red_success_falls_after_blue_s_first_fine_tuning(tmp_path):
    results = arena(load_arena(ARENA_QUICK), tmp_path / "run").results
    first = results["scoreboard"]["rounds"][0]
    assert first["fine_tuned"] != []
    assert first["red_success_after"] < first["red_success_before"]
    for entry in results["rounds"][0]["entries"]:
        if entry["fine_tuned"]:  # each fine-tuned defense: red's best attack leaves more robust accuracy than before
            assert entry["robust_after"] > entry["robust_before"], entry
    assert sorted(r["defense"] for r in results["leaderboard"]) == sorted(b["name"] for b in results["blue"])


def test_every_packaged_arena_example_is_valid_and_linked_from_experiments():
    from pathlib import Path

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    examples = sorted(p for p in ARENA_QUICK.parent.glob("arena-*.toml"))
    assert [p.name for p in examples] == ["arena-blackbox.toml", "arena-quick.toml"]
    for path in examples:
        assert (experiments / path.name).resolve() == path
        assert load_arena(path).name == path.stem
