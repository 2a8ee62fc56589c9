"""SAE seeds: matching latents across seeds by decoder direction, and what counts as a
finding that holds in every seed."""

import pytest
import torch

from analysis import sae_seeds
from analysis.saes import Quality


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_best_match_finds_each_latent_again_in_a_permuted_noisy_copy():
    generator = torch.Generator().manual_seed(0)
    first = _unit(torch.randn(64, 16, generator=generator))
    order = torch.randperm(64, generator=generator)
    other = _unit(first[order] + 0.05 * torch.randn(64, 16, generator=generator))
    index, cosine = sae_seeds.best_matches(first, other)
    assert torch.equal(order[index], torch.arange(64))  # other[j] is first[order[j]]: the match undoes the shuffle
    assert cosine.min() > 0.9 and cosine.max() <= 1 + 1e-6


def _profile(decoder, activation, effect, quality=None):
    return {"decoder": decoder, "activation": torch.tensor(activation), "effect": torch.tensor(effect),
            "quality": quality}


def _quality(ev: float) -> Quality:
    return Quality(explained_variance=ev, l0=32.0, dead_fraction=0.2, ce_loss_clean=2.0, ce_loss_spliced=2.1,
                   ce_loss_zero_ablated=10.0, ce_loss_recovered=0.98, answer_accuracy_clean=0.9,
                   answer_accuracy_spliced=0.9, n_heldout_tokens=100, n_family_prompts=64)


def test_a_finding_holds_only_where_every_seed_has_a_close_active_match_pushing_the_same_way():
    eye = torch.eye(4)
    first = _profile(eye, [5.0, 4.0, 3.0, 0.0], [1.0, -1.0, 0.5, 0.2])
    # seed 1 holds latents 0, 1 and 3 again, permuted; latent 2's nearest is at 45 degrees
    tilted = _unit(torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 1.0]]))
    seed1 = _profile(tilted, [0.0, 6.0, 2.0, 1.0], [0.3, 2.0, 1.0, 0.4], _quality(0.97))
    # seed 2: the identity, but latent 2 silent on the prompt
    seed2 = _profile(eye, [5.0, 4.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.2], _quality(0.95))
    named = {0: ["sae: top by activation"], 1: ["patching all3: ablated"], 2: ["sae: top by attribution"]}
    live = torch.tensor([True, True, True, False])
    runs, records, tensors = sae_seeds.compare_seeds(first, {1: seed1, 2: seed2}, named, live, threshold=0.9, top=2)
    by = {r.latent: r for r in records}
    assert [(m.seed, m.latent) for m in by[0].matches] == [(1, 1), (2, 0)] and by[0].holds
    assert by[1].matches[0].latent == 2 and by[1].matches[0].logit_effect == 1.0  # found, but pushes the other way
    assert not by[1].holds
    assert by[2].matches[0].cosine == pytest.approx(2 ** -0.5) and by[2].matches[1].activation == 0.0
    assert not by[2].holds and by[2].named_by == ["sae: top by attribution"]
    assert [r.matched for r in runs] == [pytest.approx(2 / 3), pytest.approx(1.0)]  # of the live latents 0-2
    # the first seed's top 2 (latents 0, 1) match 1, 2 in seed 1, whose top 2 are {1, 2}; in seed 2 {0, 1}
    assert [r.top_kept for r in runs] == [2, 2]
    assert torch.equal(tensors["seed1/match"], torch.tensor([1, 2, 3, 0]))


def test_quality_spread_is_the_range_over_seeds_of_every_real():
    spread = sae_seeds.quality_spread([_quality(0.97), _quality(0.95), _quality(0.96)])
    assert spread["explained_variance"] == pytest.approx(0.02) and spread["l0"] == 0.0
    assert "n_heldout_tokens" not in spread  # counts are not reals
