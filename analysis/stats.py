"""Intervals for means over prompts (the percentile bootstrap, seeded and vectorised), and
p-values for paired changes (the sign-flip test)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict
from torch import Tensor


class Estimate(BaseModel):
    """A mean over prompts with its bootstrap interval (all None when there was nothing to average)."""

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


def cluster_bootstrap(values: Float[Tensor, "cluster item"], mask: Tensor | None, n_resamples: int, seed: int,
                      level: float = 0.95) -> tuple[float | None, float | None, float | None, int]:
    """(mean, low, high, n) of the masked values, with a two-stage percentile bootstrap.

    Clusters (e.g. few-shot contexts) are resampled with replacement, then items (e.g.
    a + b pairs) within each drawn cluster, so the interval carries both sources of
    variation. With one cluster this is the ordinary bootstrap over items. An empty mask
    gives (None, None, None, 0).
    """
    values = values.double()
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    n = int(mask.sum())
    if n == 0:
        return None, None, None, 0
    mean = values[mask].mean().item()
    generator = torch.Generator().manual_seed(seed)
    n_clusters, n_items = values.shape
    clusters = torch.randint(n_clusters, (n_resamples, n_clusters), generator=generator)
    items = torch.randint(n_items, (n_resamples, n_clusters, n_items), generator=generator)
    drawn = values[clusters[..., None], items]  # (resample, cluster, item)
    weight = mask[clusters[..., None], items].double()
    means = (drawn * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1)
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return mean, low, high, n


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
