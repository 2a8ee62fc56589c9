"""The paired sign-flip test behind every ablation's p-value."""

import itertools

import pytest
import torch

from analysis.stats import paired_estimate, sign_flip_p_value


def test_sign_flip_p_value_is_exact_for_small_sets():
    deltas = [0.3, -0.1, 0.8, 0.5, -0.2, 0.9, 0.4]
    patterns = list(itertools.product([1, -1], repeat=len(deltas)))
    expected = sum(abs(sum(s * d for s, d in zip(signs, deltas))) >= abs(sum(deltas)) - 1e-9
                   for signs in patterns) / len(patterns)
    deltas = torch.tensor(deltas)
    assert sign_flip_p_value(deltas, 100, seed=0) == pytest.approx(float(expected))
    assert sign_flip_p_value(torch.ones(12), 100, seed=0) == pytest.approx(2 / 2**12)  # only all-plus, all-minus
    assert sign_flip_p_value(torch.tensor([1.0, -1.0, 2.0, -2.0]), 100, seed=0) == 1.0


def test_sign_flip_p_value_samples_large_sets_seeded():
    shifted = torch.linspace(-1, 1, 40) + 2
    assert sign_flip_p_value(shifted, 999, seed=0) == pytest.approx(1 / 1000)
    centred = torch.linspace(-1, 1, 40)
    assert sign_flip_p_value(centred, 999, seed=0) > 0.9
    assert sign_flip_p_value(centred + 0.1, 999, seed=3) == sign_flip_p_value(centred + 0.1, 999, seed=3)


def test_paired_estimate_carries_the_mean_interval_and_p_value():
    deltas = torch.tensor([-1.0, -2.0, -1.5, -0.5, -3.0, -1.2])
    e = paired_estimate(deltas, 500, seed=1)
    assert e.mean == pytest.approx(-1.533333, abs=1e-5) and e.n == 6 and e.low < e.mean < e.high < 0
    assert e.p_value == pytest.approx(2 / 64)
