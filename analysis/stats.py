"""Intervals for means over prompts (the percentile bootstrap, seeded and vectorised), and
p-values for paired changes (the sign-flip test)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict
from torch import Tensor


class Estimate(BaseModel):
    """A mean over prompts with its bootstrap interval (all None when there was nothing to
    average; low and high None when the values are the whole population, not a sample)."""

    model_config = ConfigDict(extra="forbid")
    mean: float | None
    low: float | None
    high: float | None
    n: int


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


def context_bootstrap(values: Float[Tensor, "context item"], mask: Tensor | None, n_resamples: int, seed: int,
                      level: float = 0.95, minus: Float[Tensor, "context item"] | None = None,
                      minus_mask: Tensor | None = None) -> Estimate:
    """The mean of the masked values over every (context, item), with an interval over contexts;
    with `minus`, the difference of that mean and `minus`'s, paired by context.

    Each context (e.g. a seeded set of few-shot examples) is a draw from the ways to set the
    examples; its items (e.g. every a + b of the grid) are the whole population of queries,
    so only contexts are resampled: each bootstrap draw takes contexts with replacement and
    pools their masked items (a ratio estimate). With one context nothing was sampled: the
    mean is exact, and low and high are None. An empty mask gives mean None.
    """
    def pooled(v: Tensor, m: Tensor | None) -> tuple[Tensor, Tensor]:
        m = torch.ones_like(v, dtype=torch.bool) if m is None else m.bool()
        return (v.double() * m).sum(1), m.sum(1).double()

    sums, counts = pooled(values, mask)
    sums_b, counts_b = pooled(minus, minus_mask) if minus is not None else (None, None)
    if counts.sum() == 0 or (counts_b is not None and counts_b.sum() == 0):
        return Estimate(mean=None, low=None, high=None, n=0)

    def statistic(index: Tensor) -> Tensor:
        value = sums[index].sum(-1) / counts[index].sum(-1)
        return value if sums_b is None else value - sums_b[index].sum(-1) / counts_b[index].sum(-1)

    n_contexts = values.shape[0]
    mean = statistic(torch.arange(n_contexts)).item()
    if n_contexts == 1:
        return Estimate(mean=mean, low=None, high=None, n=int(counts.sum()))
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_contexts, (n_resamples, n_contexts), generator=generator)
    valid = (counts[draws].sum(1) > 0) & (True if counts_b is None else counts_b[draws].sum(1) > 0)
    means = statistic(draws[valid])
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Estimate(mean=mean, low=low, high=high, n=int(counts.sum()))


def estimate_mean(values: Float[Tensor, "n"], n_resamples: int, seed: int, level: float = 0.95) -> Estimate:
    """The mean of values over prompts and its percentile bootstrap interval."""
    low, high = bootstrap_ci(values, n_resamples, seed, level)
    return Estimate(mean=values.double().mean().item(), low=low.item(), high=high.item(), n=len(values))


class PairedEstimate(Estimate):
    """A mean of paired differences (intervened - unchanged, per prompt) with its interval
    and the two-sided p-value of a sign-flip test (H0: the differences are symmetric about 0)."""

    p_value: float | None


def sign_flip_p_value(deltas: Float[Tensor, "n"], n_resamples: int, seed: int) -> float:
    """Two-sided paired permutation test: how often flipping the signs of the differences
    gives a mean at least as far from 0. Exact (every sign pattern) up to 2^16 patterns,
    else `n_resamples` seeded random patterns with the +1 correction."""
    deltas = deltas.double()
    n = len(deltas)
    observed = deltas.mean().abs() * (1 - 1e-6)  # ties (up to float32 rounding) count as hits
    if n <= 16:
        bits = (torch.arange(2**n)[:, None] >> torch.arange(n)) & 1
        means = ((1 - 2 * bits.double()) * deltas).mean(1).abs()
        return (means >= observed).double().mean().item()
    generator = torch.Generator().manual_seed(seed)
    signs = 1 - 2 * torch.randint(2, (n_resamples, n), generator=generator).double()
    hits = ((signs * deltas).mean(1).abs() >= observed).sum().item()
    return (1 + hits) / (1 + n_resamples)


def paired_estimate(deltas: Float[Tensor, "n"], n_resamples: int, seed: int, level: float = 0.95) -> PairedEstimate:
    """estimate_mean of paired differences, with their sign-flip p-value."""
    base = estimate_mean(deltas, n_resamples, seed, level)
    return PairedEstimate(**base.model_dump(), p_value=sign_flip_p_value(deltas, n_resamples, seed))
