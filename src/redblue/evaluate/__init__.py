"""Attack x eps grids over a dataset: verified adversarial examples, the per-sample worst case over
attacks, certified lower bounds beside it, and the gradient-masking sanity checks.

The package, in the order an evaluation runs:

* `plan`: attack lists parsed from text (`fgsm,pgd:steps=40`), the presets, labels, cascade order;
* `batching`: batch sizes from the device, the model and its free memory, and the out-of-memory split;
* `verify`: one attack run in batches, every image re-checked (ball, box, finite) and re-predicted;
* `cascade`: all attacks at one eps, the worst case per sample, the certified bound beside it;
* `checks`: sanity checks on numbers and model outputs; `probes`: sanity checks that run attacks of
  their own (eps = 0, eps = 1, more steps, the masking probe); `audit`: which checks run, on which
  attacks and samples;
* `results`: the records an evaluation returns, and its progress reports; `engine`: `evaluate`;
* `resume`: finished rows kept by key, so an interrupted evaluation resumes; `folder`: the run folder
  of `redblue evaluate --out`; `single`: one attack on every sample (`redblue attack`).
"""

from redblue.evaluate.batching import (
    AUTO,
    Batching,
    BatchSize,
    OutOfMemory,
    choose_batching,
    parse_batch_size,
    require_batch_size,
)
from redblue.evaluate.cascade import CERTIFY_METHODS, auto_certify_method
from redblue.evaluate.checks import Finding
from redblue.evaluate.engine import (
    CHECK_SUBSET,
    PROBE_SIZE,
    evaluate,
    require_model_fits,
)
from redblue.evaluate.plan import (
    MODES,
    PRESETS,
    attack_label,
    estimated_cost,
    parse_attack_list,
)
from redblue.evaluate.results import (
    AttackResult,
    EpsResult,
    Evaluation,
    Progress,
    ProgressCallback,
)
from redblue.evaluate.resume import FolderRowCache, RowCache
from redblue.evaluate.verify import (
    BALL_ATOL,
    BALL_RTOL,
    BOX_ATOL,
    AttackRun,
    box_exempt,
    require_logits,
    run_attack,
    validity_findings,
)

__all__ = [
    "AUTO",
    "BALL_ATOL",
    "BALL_RTOL",
    "BOX_ATOL",
    "CERTIFY_METHODS",
    "CHECK_SUBSET",
    "MODES",
    "PRESETS",
    "PROBE_SIZE",
    "AttackResult",
    "AttackRun",
    "BatchSize",
    "Batching",
    "EpsResult",
    "Evaluation",
    "Finding",
    "OutOfMemory",
    "FolderRowCache",
    "Progress",
    "ProgressCallback",
    "RowCache",
    "attack_label",
    "auto_certify_method",
    "box_exempt",
    "choose_batching",
    "estimated_cost",
    "evaluate",
    "parse_attack_list",
    "parse_batch_size",
    "require_batch_size",
    "require_logits",
    "require_model_fits",
    "run_attack",
    "validity_findings",
]
