"""Intervals for means over prompts: the percentile bootstrap, seeded and vectorised."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def bootstrap_ci(values: Float[Tensor, "n *rest"], n_resamples: int, seed: int,
                 level: float = 0.95) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap interval of the mean over the first axis, for every other entry.

    Resamples prompts with replacement; the interval says how much the mean would move
    with another draw of prompts from the same family, not how variable the prompts are.
    """
    n = values.shape[0]
    if n < 2:
        raise ValueError("a bootstrap interval needs at least two values")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(n, (n_resamples, n), generator=generator)
    means = values.double()[index].mean(dim=1)  # (resample, *rest)
    alpha = (1 - level) / 2
    bounds = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=0)
    return bounds[0].to(values.dtype), bounds[1].to(values.dtype)
