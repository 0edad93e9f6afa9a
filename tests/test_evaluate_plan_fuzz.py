"""`parse_attack_list` on random text: a plan or one RedblueError line, never any other exception.

Two strategies: arbitrary text, and text assembled from the pieces of the grammar (registered
names, presets, real parameter names, separators, junk values), which reaches far deeper into the
parser than random characters do. Every plan that comes back is checked against the registry.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import redblue.attacks  # noqa: F401  (registers the attacks)
from redblue.attacks.registry import ATTACKS
from redblue.errors import RedblueError
from redblue.evaluate import PRESETS, parse_attack_list

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

NAMES = sorted(ATTACKS) + sorted(PRESETS)
PARAMETERS = sorted({f.name for entry in ATTACKS.values() for f in dataclasses.fields(entry.params_type)})
VALUES = ["1", "0", "-1", "0.5", "1e309", "nan", "inf", "-inf", "true", "false", "none", "ce", "random", "", "x", "1e-400",
          "99999999999999999999", "0x10", "pgd/steps=3", "=", ":", "é", "\x00"]


def _check(text: str, eps: float) -> None:
    try:
        plan, used_preset = parse_attack_list(text, eps=eps)
    except RedblueError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return
    assert plan, "a plan without attacks must be an error"
    assert isinstance(used_preset, bool)
    for entry, params in plan:
        assert ATTACKS[entry.name] is entry
        assert isinstance(params, entry.params_type) and params.eps == eps


@FUZZ
@given(text=st.text(max_size=80), eps=st.sampled_from([0.0, 0.1, 1.0, 1.5, -0.1, float("nan"), float("inf")]))
@example(text="fgsm,pgd:steps=40,standard", eps=0.1)
@example(text="steps=3", eps=0.1)
@example(text="pgd:steps=", eps=0.1)
@example(text="pgd:steps=3,steps=4", eps=0.1)
@example(text=":", eps=0.1)
@example(text="apgd-ce:0\n0=1", eps=0.0)  # found by this test: a newline echoed into the error
@example(text="transfer:surrogate=,attack=", eps=0.1)
def test_random_text_gives_a_plan_or_one_error_line(text, eps):
    _check(text, eps)


@st.composite
def grammar_text(draw) -> str:
    """Attack lists built from real names, parameters and separators, with junk mixed in."""
    pieces = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(NAMES) | st.text(max_size=6))
        pairs = draw(st.lists(st.tuples(st.sampled_from(PARAMETERS) | st.text(max_size=4),
                                        st.sampled_from(VALUES) | st.text(max_size=4)), max_size=3))
        body = ",".join(f"{key}{draw(st.sampled_from(['=', '', '==']))}{value}" for key, value in pairs)
        pieces.append(name + (draw(st.sampled_from([":", ",", ":,", " : "])) + body if body else ""))
    return draw(st.sampled_from([",", ", ", ",,", ";"])).join(pieces)


@FUZZ
@given(text=grammar_text(), eps=st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.0, -1.0]))
def test_grammar_shaped_text_gives_a_plan_or_one_error_line(text, eps):
    _check(text, eps)
