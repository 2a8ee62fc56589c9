"""What every stage's main() does: parse --model, validate params, seed, load the model,
run, then check that the stage read exactly the other stages' outputs it declares.

Exit status: 2 for bad params or arguments (nothing written), 3 when the model cannot be
had here (nothing written; the message says what to do instead), 5 when the stage read
results that its StageSpec does not declare, or declares some it never read.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from analysis.artifacts import StagePaths, reads
from analysis.models import ModelUnavailableError, load_model
from analysis.params import OUTPUTS, output_path, parse_model_arg, stages
from analysis.pipeline import declared_reads, undeclared_reads
from analysis.timing import timed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def check_reads(stage: str, key: str, paths: StagePaths) -> None:
    """Fail (exit 5) unless the stage read exactly the outputs its StageSpec declares."""
    declared = declared_reads(stage, stages()[stage], key)
    own = [output_path(stage, kind, key) for kind in OUTPUTS]
    missing, unused = undeclared_reads(reads(), declared, own, root=paths.root.resolve().parent)
    if missing or unused:
        print(f"error: stage {stage} read {missing or 'nothing undeclared'} not declared in its StageSpec, and "
              f"declares {unused or 'nothing'} it never read; fix `reads` of its section in analysis/params.py",
              file=sys.stderr)
        raise SystemExit(5)


def run_stage(stage: str, run: Callable[..., Any], argv: list[str] | None = None) -> None:
    """main() of a stage whose run(model, params, key, paths) needs the model."""
    key, params = parse_model_arg(stage, argv)
    seed_everything(params.seed)
    try:
        with timed(f"{stage}: model loaded"):
            model = load_model(key, params)
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    paths = StagePaths(key, stage)
    with timed(f"{stage}: done"):
        run(model, params, key, paths)
    check_reads(stage, key, paths)
