"""Hypothesis profiles for the property-based suites; import this module before using @given.

- "ci" (the default): derandomised (the same examples on every run, so CI cannot flake) and a
  bounded number of examples, so the default suite stays fast.
- "slow": random examples, many more of them; `make test-slow` selects it with
  HYPOTHESIS_PROFILE=slow.

No example database is written (the repository stays clean); a failure prints the example and a
`@reproduce_failure` blob instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=12,
    deadline=None,  # attack calls vary in time with the drawn shapes; speed is for benchmarks/
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "slow",
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
