"""Intervals and tests, seeded and vectorised.

- Means over many prompts: the percentile bootstrap (`estimate_mean`).
- Means over few units (the pairs of an error set): the studentised bootstrap
  (`studentized_mean`), whose coverage was checked by simulation at n = 12 and 25
  (tests/unit/test_stats.py): about 0.94 for normal and exponential data where the
  percentile bootstrap gives 0.87 to 0.90.
- Proportions (k of n, including 0 of n): the exact Clopper-Pearson interval (`proportion`).
- Paired changes: the sign-flip test (exact over every sign pattern up to 2^20, else Monte
  Carlo with its floor), McNemar's exact test for paired yes/no outcomes, and the empirical
  p-value of an effect against random draws (`control_p_value`, floor 1 / (1 + draws)).
- Many tests at once: Holm's step-down adjustment (`holm`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict
from torch import Tensor

Method = Literal["percentile bootstrap", "studentized bootstrap", "Clopper-Pearson", "exact"]


class Estimate(BaseModel):
    """A mean over prompts with its interval (all None when there was nothing to average;
    low and high None when the values are the whole population, not a sample). `method`
    says how the interval was made (None: the percentile bootstrap of earlier results)."""

    model_config = ConfigDict(extra="forbid")
    mean: float | None
    low: float | None
    high: float | None
    n: int
    method: Method | None = None


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


def studentized_mean(values: Float[Tensor, "n"], n_resamples: int, seed: int, level: float = 0.95) -> Estimate:
    """The mean with its studentised (bootstrap-t) interval: each resample's mean minus the
    sample's, over the resample's standard error, gives the quantiles that scale the
    sample's standard error. Where every value is the same, the interval is that value."""
    x = values.double()
    n = len(x)
    if n < 2:
        raise ValueError("an interval needs at least two values")
    mean, se = x.mean(), x.std() / math.sqrt(n)
    if se == 0:
        return Estimate(mean=mean.item(), low=mean.item(), high=mean.item(), n=n, method="studentized bootstrap")
    generator = torch.Generator().manual_seed(seed)
    draws = x[torch.randint(n, (n_resamples, n), generator=generator)]
    t = (draws.mean(1) - mean) / (draws.std(1) / math.sqrt(n)).clamp(min=se.item() * 1e-6)
    alpha = (1 - level) / 2
    t_low, t_high = torch.quantile(t, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Estimate(mean=mean.item(), low=(mean - t_high * se).item(), high=(mean - t_low * se).item(), n=n,
                    method="studentized bootstrap")


def proportion(k: int, n: int, level: float = 0.95) -> Estimate:
    """k of n with the exact Clopper-Pearson interval (0 of 56: [0, 0.064])."""
    from scipy.stats import beta

    if n == 0:
        return Estimate(mean=None, low=None, high=None, n=0, method="Clopper-Pearson")
    alpha = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha, k + 1, n - k))
    return Estimate(mean=k / n, low=low, high=high, n=n, method="Clopper-Pearson")


def mcnemar_p_value(became: int, ceased: int) -> float:
    """Two-sided exact McNemar test for paired yes/no outcomes: `became` pairs turned yes,
    `ceased` turned no; under H0 each discordant pair turns either way with probability 1/2."""
    from scipy.stats import binomtest

    discordant = became + ceased
    return 1.0 if discordant == 0 else float(binomtest(became, discordant, 0.5).pvalue)


def control_p_value(observed: float, draws: list[float], lower: bool = True) -> float:
    """The share of random draws whose effect is at least as large as the observed one (in
    the direction `lower`: as low or lower), with the +1 correction: at least 1 / (1 + draws)."""
    hits = sum((d <= observed) if lower else (d >= observed) for d in draws)
    return (1 + hits) / (1 + len(draws))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the k-th smallest p times the
    number of tests not yet passed, made monotone and capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


class PairedEstimate(Estimate):
    """A mean of paired differences (intervened - unchanged, per prompt) with its interval
    and the two-sided p-value of a sign-flip test (H0: the differences are symmetric about 0)."""

    p_value: float | None


EXACT_SIGN_FLIPS = 16  # up to 2^16 sign patterns are enumerated; beyond, they are sampled


def sign_flip_p_value(deltas: Float[Tensor, "n"], n_resamples: int, seed: int) -> float:
    """Two-sided paired permutation test: how often flipping the signs of the differences
    gives a mean at least as far from 0. Exact (every sign pattern) up to 2^16 patterns,
    else `n_resamples` seeded random patterns with the +1 correction (its floor is
    1 / (1 + n_resamples))."""
    deltas = deltas.double()
    n = len(deltas)
    observed = deltas.mean().abs() * (1 - 1e-6)  # ties (up to float32 rounding) count as hits
    if n <= EXACT_SIGN_FLIPS:
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


def ratio_of_means(numerator: Float[Tensor, "n"], denominator: Float[Tensor, "n"], n_resamples: int, seed: int,
                   level: float = 0.95) -> Estimate:
    """mean(numerator) / mean(denominator) over paired units, with a percentile bootstrap
    interval that resamples the units (a faithfulness: the share of an effect kept)."""
    a, b = numerator.double(), denominator.double()
    n = len(a)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(n, (n_resamples, n), generator=generator)
    ratios = a[index].mean(1) / b[index].mean(1)
    ratios = ratios[ratios.isfinite()]
    alpha = (1 - level) / 2
    low, high = torch.quantile(ratios, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Estimate(mean=(a.mean() / b.mean()).item(), low=low, high=high, n=n, method="percentile bootstrap")

