"""Shared fixtures: seeding for every test, and the bundled model loaded once per session.

Every jaxtyping annotation in `analysis` is checked at run time in the tests (beartype
through jaxtyping's import hook, installed before any analysis module is imported): a
tensor of the wrong shape or dtype fails the test that passes it.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from jaxtyping import install_import_hook

install_import_hook("analysis", "beartype.beartype")
# Tests run with the numerics `make` uses (analysis/__init__.py; README.md, "What
# reproduces where"): MKL's strict mode on this processor's own code path.
import analysis  # noqa: E402, F401
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # `import helpers`
os.chdir(REPO)  # stages and params resolve paths from the repository root


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def params():
    from analysis.params import load_params

    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def smollm2(params):
    """SmolLM2-135M-Instruct as the pipeline loads it (about 30 s cold, 5 s cached)."""
    from analysis.models import load_model

    return load_model("smollm2-135m", params, device="cpu")
