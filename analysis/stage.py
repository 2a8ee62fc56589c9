"""What every stage's main() does: parse --model, validate params, seed, load the model.

Exit status: 2 for bad params or arguments (nothing written), 3 when the model cannot be
had here (nothing written; the message says what to do instead).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from analysis.artifacts import StagePaths
from analysis.models import ModelUnavailableError, load_model
from analysis.params import Params, exit_on_params_error, load_params


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def parse_model_arg(stage: str, argv: list[str] | None = None) -> tuple[str, Params]:
    parser = argparse.ArgumentParser(prog=f"python -m analysis.{stage}", description=f"DVC stage {stage}@<model>")
    parser.add_argument("--model", required=True, help="a model key from params.yaml (e.g. smollm2-135m)")
    args = parser.parse_args(argv)
    with exit_on_params_error():
        params = load_params()
        params.model(args.model)
    return args.model, params


def run_stage(stage: str, run: Callable[..., Any], argv: list[str] | None = None) -> None:
    """main() of a stage whose run(model, params, key, paths) needs the model."""
    key, params = parse_model_arg(stage, argv)
    seed_everything(params.seed)
    try:
        model = load_model(key, params)
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    run(model, params, key, StagePaths(key, stage))
