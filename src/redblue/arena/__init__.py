"""The red <-> blue arena: a blue roster of defenses against a red roster of attacks inside a declared budget.

`config` reads and validates an arena file; `cells` holds the cells (train, matrix, clean and
certified, leaderboard) the sweep engine runs; `game` the rules (red's pick, blue's fine-tuning
objective, the scoreboard) on numbers alone; `results` builds results.json from the cell records;
`run` (`arena`) plays the stages into a run folder. Rendering is `redblue.report.arena`'s.
"""

from redblue.arena.config import ARENA_QUICK, ArenaConfig, BlueSpec, Budget, RedSpec, SurrogateSpec, check_red, load_arena
from redblue.arena.game import Pick, fine_tune_objective, scoreboard, strongest
from redblue.arena.results import worst_case
from redblue.arena.run import ArenaResult, State, arena

__all__ = [
    "ARENA_QUICK", "ArenaConfig", "ArenaResult", "BlueSpec", "Budget", "Pick", "RedSpec", "State", "SurrogateSpec", "arena",
    "check_red", "fine_tune_objective", "load_arena", "scoreboard", "strongest", "worst_case",
]
