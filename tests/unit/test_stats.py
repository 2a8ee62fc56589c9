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


# --- intervals valid at small n, checked by simulation ----------------------------------

def _coverage(method, sample, truth, n, sims=1000):

    generator = torch.Generator().manual_seed(7)
    hits = 0
    for i in range(sims):
        x = sample(n, generator)
        e = method(x, 1000, seed=i)
        hits += e.low <= truth <= e.high
    return hits / sims


@pytest.mark.parametrize(("name", "sample", "truth", "floor"), [
    ("normal", lambda n, g: torch.randn(n, generator=g, dtype=torch.float64), 0.0, 0.925),
    ("exponential", lambda n, g: -torch.rand(n, generator=g, dtype=torch.float64).log(), 1.0, 0.915),
])
def test_the_studentized_interval_covers_the_mean_at_n_12_where_the_percentile_bootstrap_does_not(name, sample,
                                                                                                  truth, floor):
    """1,000 seeded samples of 12 values: the 95% studentised interval holds the true mean in
    at least `floor` of them (measured: about 0.94), the percentile bootstrap in fewer."""
    from analysis.stats import estimate_mean, studentized_mean

    studentized = _coverage(studentized_mean, sample, truth, 12)
    percentile = _coverage(estimate_mean, sample, truth, 12)
    assert studentized >= floor and studentized <= 0.975
    assert percentile < studentized - 0.02


def test_clopper_pearson_gives_the_exact_bounds_including_zero_of_n():
    from analysis.stats import proportion

    none = proportion(0, 56)
    assert (none.mean, none.low) == (0.0, 0.0) and none.high == pytest.approx(0.0638, abs=5e-5)
    every = proportion(12, 12)
    assert every.high == 1.0 and every.low == pytest.approx(0.7354, abs=5e-5)
    half = proportion(5, 10)
    assert (half.low, half.high) == pytest.approx((0.1871, 0.8129), abs=5e-5) and half.method == "Clopper-Pearson"


def test_holm_adjusts_step_down_and_keeps_the_order():
    from analysis.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_mcnemar_and_the_control_p_value_and_their_floors():
    from analysis.stats import control_p_value, mcnemar_p_value

    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(0, 10) == pytest.approx(2 / 2**10)
    assert control_p_value(-3.0, [-1.0] * 1000) == pytest.approx(1 / 1001)  # the floor with 1,000 draws
    assert control_p_value(-1.0, [-1.0, -2.0, 0.0]) == pytest.approx(3 / 4)
    assert control_p_value(2.0, [1.0, 3.0], lower=False) == pytest.approx(2 / 3)
