"""The shared validators: every bad value is one ConfigError line, never another exception."""

from __future__ import annotations

import pytest

from redblue.errors import ConfigError, require_finite, require_in_range, require_non_negative, require_positive


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400, -(10**400)])
def test_non_finite_values_and_huge_integers_are_one_line(value):
    for check in (require_finite, require_non_negative, require_positive):
        with pytest.raises(ConfigError, match="must be a finite number") as info:
            check("steps", value)
        assert "\n" not in str(info.value) and len(str(info.value)) < 120


@pytest.mark.parametrize("value", ["0.1", None, True, [1]])
def test_values_that_are_not_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="must be a number"):
        require_finite("eps", value)


def test_good_values_pass_and_ranges_are_checked():
    require_positive("lr", 10**30)  # a large but finite integer is a number
    require_in_range("eps", 0.5, 0.0, 1.0)
    with pytest.raises(ConfigError, match=r"eps must be in \[0.0, 1.0\], got 1.5"):
        require_in_range("eps", 1.5, 0.0, 1.0)
    with pytest.raises(ConfigError, match="lr must be > 0, got 0"):
        require_positive("lr", 0)
