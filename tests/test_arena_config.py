"""Arena configs: every mistake is one line (ConfigError; exit 2 from the CLI with nothing written), the budget is
enforced on norm, eps, knowledge, steps, restarts and queries; the game's rules on constructed numbers."""

from __future__ import annotations

import pytest
from arena_fixtures import TINY_TOML, write_tiny

from redblue.arena import Pick, fine_tune_objective, load_arena, scoreboard, strongest, worst_case
from redblue.arena.game import round_entry
from redblue.cli import main
from redblue.defenses import FGSMObjective, PGDObjective
from redblue.errors import ConfigError


def _load(tmp_path, text):
    return load_arena(write_tiny(tmp_path, text))


def _with_red(attack: str, extra: str = "") -> str:
    return TINY_TOML + f'\n[[red]]\nname = "extra"\nattack = "{attack}"\n{extra}\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_with_red("pgd:eps=0.2"), "above the budget: eps 0.2 > max_eps 0.1"),
        (TINY_TOML.replace("eps = [0.05, 0.1]", "eps = [0.05, 0.3]"), "eps 0.3 is above the budget's max_eps 0.1"),
        (_with_red("pgd:steps=41"), "steps=41 is above the budget's steps (40)"),
        (_with_red("pgd:restarts=2"), "restarts=2 is above the budget's restarts (1)"),
        (_with_red("apgd-t:n_iter=10"), "restarts=1 x n_target_classes=9 is above the budget's restarts (1)"),
        (_with_red("transfer:attack=pgd/steps=100", 'surrogate = { model = "mlp:hidden=8" }'), "steps=100 is above the budget's steps (40)"),
        (_with_red("pgd-l2"), "attack 'pgd-l2' is l2 but the budget's norm is linf"),
        (_with_red("transfer:attack=pgd"), "a transfer attack needs [red.surrogate]"),
        (_with_red("transfer:attack=pgd,surrogate=x.safetensors"), "red trains its own surrogate"),
        (_with_red("pgd:steps=5", 'surrogate = { model = "mlp" }'), "only a transfer attack takes a surrogate"),
        (_with_red("nonesuch"), "unknown attack 'nonesuch'"),
        (_with_red("fgsm").replace('name = "extra"', 'name = "fgsm"'), "red name 'fgsm' is used twice"),
        (TINY_TOML.replace('objective = "fgsm:eps=0.1"', 'objective = "fgsm:eps=-1"'), "eps must be in [0.0, 1.0]"),
        (TINY_TOML.replace("[train]", "[train]\nlr_typo = 1"), "has no field 'lr_typo'"),
        (TINY_TOML.replace("[train]", "[train]\nepochs = 3"), "[train] sets 'epochs'; set it per defense"),
        (TINY_TOML.replace("rounds = 1", "rounds = -1"), "rounds must be an integer >= 0"),
        (TINY_TOML.replace("threshold = 0.5", "threshold = 1.5"), "threshold must be in [0.0, 1.0]"),
        (TINY_TOML.replace('knowledge = "white-box"', 'knowledge = "grey-box"'), "budget.knowledge must be one of"),
        (TINY_TOML.replace('leaderboard = "fast"', 'leaderboard = "nonesuch"'), "unknown attack 'nonesuch'"),
        (TINY_TOML + '\n[[blue]]\nname = "given"\nfile = "missing.safetensors"\n', "missing.safetensors does not exist"),
        (TINY_TOML.replace("seed = 0", "seed = 0\nflavour = 1"), "has no field 'flavour'"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_mistake(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        config = _load(tmp_path, text)
        config.record()  # a given file is read (hashed) when the run records its config
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_knowledge_limits_the_threats_red_may_use(tmp_path):
    black_box = TINY_TOML.replace('knowledge = "white-box"', 'knowledge = "black-box"\nqueries = 1000')
    with pytest.raises(ConfigError, match="fgsm is a white-box attack, which black-box knowledge does not allow"):
        _load(tmp_path, black_box)
    only_queries = black_box.split("[[red]]")[0] + '[[red]]\nname = "square"\nattack = "square:n_queries=500,restarts=1"\n'
    assert [r.name for r in _load(tmp_path, only_queries).red] == ["square"]
    with pytest.raises(ConfigError, match=r"2000 queries \(n_queries x restarts\) are above the budget's queries \(1000\)"):
        _load(tmp_path, only_queries.replace("n_queries=500", "n_queries=2000"))
    transfer_only = TINY_TOML.replace('knowledge = "white-box"', 'knowledge = "transfer"')
    with pytest.raises(ConfigError, match="fgsm is a white-box attack, which transfer knowledge does not allow"):
        _load(tmp_path, transfer_only)


def test_the_budget_eps_joins_the_eps_list_and_an_attack_with_its_own_eps_runs_there_only(tmp_path):
    config = _load(tmp_path, TINY_TOML.replace("eps = [0.05, 0.1]", "eps = [0.05]") + '\n[[red]]\nname = "low"\nattack = "fgsm:eps=0.03"\n')
    assert config.all_eps == (0.05, 0.1)
    from redblue.arena.config import attack_eps

    assert attack_eps(config.red_spec("low"), config.all_eps) == (0.03,)
    assert attack_eps(config.red_spec("pgd"), config.all_eps) == (0.05, 0.1)


def test_cli_refuses_an_over_budget_attack_with_exit_2_and_writes_nothing(tmp_path, capsys):
    path = write_tiny(tmp_path, _with_red("pgd:eps=0.25"))
    out = tmp_path / "run"
    assert main(["arena", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: red extra: attack 'pgd:eps=0.25' is above the budget")
    assert not out.exists()


# --- the game's rules on constructed numbers ----------------------------------------------------


def test_red_picks_the_attack_that_leaves_the_lowest_accuracy_ties_to_the_roster_order():
    assert strongest({"fgsm": 0.4, "pgd": 0.1, "square": 0.3}, ["fgsm", "pgd", "square"]) == Pick("pgd", 0.1)
    assert strongest({"square": 0.2, "pgd": 0.2}, ["fgsm", "pgd", "square"]) == Pick("pgd", 0.2)


def test_blue_fine_tunes_with_the_attack_itself_where_an_objective_exists_else_pgd():
    assert fine_tune_objective("fgsm", 0.1)[0] == FGSMObjective(eps=0.1)
    assert fine_tune_objective("pgd:steps=40", 0.1)[0] == PGDObjective(eps=0.1)
    objective, why = fine_tune_objective("square:n_queries=100", 0.05)
    assert objective == PGDObjective(eps=0.05) and "square has no training objective" in why


def test_scoreboard_on_constructed_numbers():
    threshold = 0.5
    round_1 = [
        round_entry("a", Pick("pgd", 0.0), Pick("apgd", 0.62), fine_tuned=True, threshold=threshold),  # blue holds after
        round_entry("b", Pick("pgd", 0.1), Pick("pgd", 0.3), fine_tuned=True, threshold=threshold),  # still broken
        round_entry("c", Pick("fgsm", 0.7), Pick("fgsm", 0.7), fine_tuned=False, threshold=threshold),  # never broken
    ]
    round_2 = [
        round_entry("a", Pick("apgd", 0.62), Pick("apgd", 0.62), fine_tuned=False, threshold=threshold),
        round_entry("b", Pick("pgd", 0.3), Pick("pgd", 0.55), fine_tuned=True, threshold=threshold),
        round_entry("c", Pick("fgsm", 0.7), Pick("fgsm", 0.7), fine_tuned=False, threshold=threshold),
    ]
    initial = {"a": Pick("pgd", 0.0), "b": Pick("pgd", 0.1), "c": Pick("fgsm", 0.7)}
    final = {"a": Pick("apgd", 0.62), "b": Pick("pgd", 0.55), "c": Pick("fgsm", 0.7)}
    board = scoreboard(initial, final, [round_1, round_2], threshold=threshold, max_rounds=3)
    first, second = board["rounds"]
    # red's success = mean over defenses of 1 - its best robust accuracy: (1 + 0.9 + 0.3) / 3 before round 1
    assert first["red_success_before"] == pytest.approx(2.2 / 3)
    assert first["red_success_after"] == pytest.approx((0.38 + 0.7 + 0.3) / 3)
    assert (first["red_wins"], first["blue_wins"], first["winner"], first["fine_tuned"]) == (1, 2, "blue", ["a", "b"])
    assert (second["red_wins"], second["winner"], second["fine_tuned"]) == (0, "blue", ["b"])
    assert board["winner"] == "blue" and board["broken"] == [] and board["held"] == ["a", "b", "c"]
    assert board["ended"].startswith("red cannot push")
    assert board["red_success_initial"] == pytest.approx(2.2 / 3) and board["red_success_final"] == pytest.approx((0.38 + 0.45 + 0.3) / 3)
    stuck = scoreboard(initial, {**final, "b": Pick("pgd", 0.3)}, [round_1], threshold=threshold, max_rounds=1)
    assert (stuck["winner"], stuck["broken"], stuck["ended"]) == ("red", ["b"], "after 1 round (the limit)")


def test_worst_case_is_one_minus_the_union_of_mistakes_and_fooled_sets():
    # 10 samples: 2 wrong clean, attacks fool {3, 4} and {4, 5, 6}: 10 - |{0, 1, 3, 4, 5, 6}| = 4 robust
    assert worst_case(10, [0, 1], [[3, 4], [4, 5, 6]]) == pytest.approx(0.4)
    assert worst_case(10, [], []) == 1.0


def test_training_knobs_are_checked_against_every_training_the_arena_will_run(tmp_path):
    # eps_warmup_epochs is fine for the adversarial defense but not for the clean one: refused before any work
    with pytest.raises(ConfigError, match="eps_warmup_epochs needs an adversarial objective; 'clean'"):
        _load(tmp_path, TINY_TOML.replace("[train]", "[train]\neps_warmup_epochs = 0.5"))
    l2 = TINY_TOML.replace('norm = "linf"', 'norm = "l2"').replace("max_eps = 0.1", "max_eps = 1.0")
    l2 = l2.split("[[red]]")[0] + '[[red]]\nname = "pgd"\nattack = "pgd-l2:steps=5"\n'
    with pytest.raises(ConfigError, match="rounds need an linf budget"):
        _load(tmp_path, l2)
    assert _load(tmp_path, l2.replace("rounds = 1", "rounds = 0")).budget.norm == "l2"
