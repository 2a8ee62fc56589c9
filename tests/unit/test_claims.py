"""The claims table's rules, each on hand-made results: reproduced, contradicted (named by
`evaluate` for the model), not applicable, not testable or inconclusive where the rule has
such a case."""

from types import SimpleNamespace as NS

import pytest
from helpers import make_params

from analysis import claims
from analysis.report import plain
from analysis.claims import (CONTRADICTED, INCONCLUSIVE, MIXED, NOT_APPLICABLE, NOT_REPRODUCED, NOT_TESTABLE, REFUTED,
                             SUPPORTED)


def est(mean, low=None, high=None, p_value=None):
    """An Estimate; low and high default to an interval 0.01 either side, None for exact."""
    return NS(mean=mean, low=mean - 0.01 if low is None else low, high=mean + 0.01 if high is None else high,
              n=30, p_value=p_value)


def exact(mean):
    return NS(mean=mean, low=None, high=None, n=100, p_value=None)


def answer(text, prob_by_layer, answer_prob):
    return NS(text=text, first_token=text, prob_by_layer=prob_by_layer, answer_prob=answer_prob,
              peak_layer=max(range(len(prob_by_layer)), key=prob_by_layer.__getitem__))


def head_summary(layer, head, low, high):
    return NS(layer=layer, head=head, family_mean=(low + high) / 2, family_low=low, family_high=high)


def grid(value, n=4):
    return [[value] * n for _ in range(n)]


def head_ablation(layer, head, copy, correct):
    return NS(layer=layer, head=head, roles=["top induction"], family={"copy": copy, "correct": correct})


def intervention(delta, p_delta):
    return NS(delta_ld=est(delta, p_value=p_delta), corrupt=NS(error_rate=est(0.2), correct_rate=est(0.5)))


def control(p_ld, p_error, draws=1000):
    return NS(draws=draws, p_ld=p_ld, p_error=p_error)


def error_set(delta, p_delta, p_ld, p_error=None, latents=(), erring=True, chosen=True):
    """A causal set (evaluation None when the model errs too rarely); with chosen heads or none."""
    evaluation = NS(n_pairs=25, ablation={"mean": intervention(delta, p_delta)},
                    control=control(p_ld, p_ld if p_error is None else p_error, 1000 if chosen else 0),
                    latents=list(latents))
    return NS(name="copy", selection=NS(chosen_heads=["L2H1"] if chosen else []),
              evaluation=evaluation if erring else None)


def latent_effect(delta, p_delta, p_ld, p_error=None, sae="res"):
    return NS(sae=sae, latents=[7, 9], ablation=intervention(delta, p_delta),
              control=control(p_ld, p_ld if p_error is None else p_error))


def feature(fid, attribution, up, down, activation=1.0):
    return NS(id=fid, attribution=attribution, activation=activation, activation_rank=3,
              logit_contribution={"misconception": up, "correct": down})


def condition(gap, error=0.2, nine=None, seq=None, chance=0.05):
    items = {} if nine is None else {"9 + 9": NS(error_prob=nine, answers=[18] * 30)}
    return NS(carry_gap=gap, error_prob={"all": est(error)}, items=items, n_wrong=40,
              classes={"sequence": seq or est(0.3)}, chance={"sequence": chance})


def results():
    """Results where every claim holds."""
    lens = NS(misconception=answer(" 6", [0.0, 0.1, 0.3, 0.2], 0.6), correct=answer(" 10", [0.0, 0.01, 0.02, 0.03], 0.1),
              n_layers=4, model="gpt2-small")
    heads = NS(configured_head=NS(layer=2, head=1, to_previous_answer=0.7, to_current_operands=0.001,
                                  rank_by_family_attention=1),
               top_heads=[head_summary(2, 1, 0.5, 0.7), head_summary(3, 0, 0.1, 0.2)],
               context_answer_attention_family=NS(n_prompts=64),
               copy_dla_family=NS(mean=grid(0.5), low=grid(0.2), high=grid(0.8), n_prompts=40),
               induction_score=grid(0.9), ablations=[head_ablation(2, 1, est(-0.05), est(0.03))],
               top_induction_head=NS(layer=2, head=1))
    behaviour = NS(conditions={"zero_shot": condition(exact(0.1), error=0.02),
                               "few_shot": condition(est(0.2), nine=est(0.9)),
                               "study_context": condition(exact(0.15))},
                   error_vs_zero_shot={"few_shot": est(0.18)},
                   frequency=NS(numbers=list(range(19)), misconception=6, prior=[0.01] * 19))
    sae = NS(answers={"misconception": " 6", "correct": " 1"},
             saes={"res": NS(d_sae=64, top_favouring_error=[5], reported=[],
                             features={"5": feature(5, 0.4, 1.2, -0.8)},
                             spacing={"spaced": NS(p_correct=0.1), "unspaced": NS(p_correct=0.2)})})
    spacing = NS(spaced=NS(correct_rate=est(0.8)), unspaced=NS(correct_rate=est(0.79)), p_value=0.8)
    patching = NS(sets={"copy": error_set(-0.5, 0.002, 0.01, latents=[latent_effect(-0.4, 0.01, 0.02)])},
                  examples=NS(error_rate=est(0.8), n_contexts=56, p_misconception=est(0.4),
                              p={"without_examples": {"misconception": 0.05}}, spacing=spacing))
    return claims.Results(lens, heads, behaviour, sae, patching)


@pytest.fixture(scope="module")
def params():
    return make_params()


def verdict(rule, r, params):
    made = rule(r, params.claims, params)
    made = made if isinstance(made, list) else [made]
    assert all(c.measured and c.rule and c.claim for c in made)
    return [c.verdict for c in made] if len(made) > 1 else made[0].verdict


def test_every_claim_is_supported_on_results_made_to_support_it(params):
    table = claims.evaluate(results(), params)
    assert {c.claim: c.verdict for c in table if c.verdict != SUPPORTED} == {
        "Spacing does not change the behaviour.": INCONCLUSIVE,  # no difference found is not equivalence
        # no feature is reported for this model: the study's feature cannot be tested
        next(c.claim for c in table if c.claim.startswith("The study's feature")): NOT_TESTABLE}
    assert len(table) == len(claims.CLAIMS)


def test_canonical_answer(params):
    r = results()
    r.lens.misconception.answer_prob, r.lens.correct.answer_prob = 0.1, 0.6
    assert verdict(claims.canonical_answer, r, params) == CONTRADICTED


@pytest.mark.parametrize(("mean", "expected"), [(0.8, SUPPORTED), (0.1, CONTRADICTED), (0.5, INCONCLUSIVE)])
def test_doubles_contexts(params, mean, expected):
    r = results()
    r.patching.examples.error_rate = est(mean)
    assert verdict(claims.doubles_contexts, r, params) == expected


def test_lens_rules(params):
    r = results()
    assert verdict(claims.lens_correct_low, r, params) == SUPPORTED  # 0.03 < the study's 0.056
    r.lens.correct.prob_by_layer = [0.0, 0.2, 0.0, 0.0]
    assert verdict(claims.lens_correct_low, r, params) == CONTRADICTED
    r.lens.misconception = answer(" 6", [0.5, 0.1, 0.0, 0.0], 0.6)  # peaks at layer 0 of 4
    assert verdict(claims.lens_late, r, params) == CONTRADICTED
    r.lens.correct.answer_prob = 0.9  # the model answers correctly: the lens of an error it does not make
    assert verdict(claims.lens_late, r, params) == verdict(claims.lens_correct_low, r, params) == NOT_APPLICABLE


def test_contradicted_is_refuted_only_on_the_studys_model(params):
    r = results()
    r.lens.misconception.answer_prob, r.lens.correct.answer_prob = 0.1, 0.6
    by_key = {c.key: c.verdict for c in claims.evaluate(r, params)}
    assert by_key["canonical_answer"] == REFUTED
    r.lens.model = "smollm2-135m"
    by_key = {c.key: c.verdict for c in claims.evaluate(r, params)}
    assert by_key["canonical_answer"] == NOT_REPRODUCED
    assert CONTRADICTED not in by_key.values()


def test_copying_head_claim_includes_the_top_induction_head_and_the_chosen_heads(params):
    r = results()
    r.heads.top_heads = [head_summary(2, 1, 0.0, 0.1)]  # no head attends
    r.heads.copy_dla_family.low, r.heads.copy_dla_family.high = grid(-0.8), grid(-0.2)
    r.heads.copy_dla_family.low[3][0], r.heads.copy_dla_family.high[3][0] = 0.1, 0.3
    assert verdict(claims.head_copies, r, params) == CONTRADICTED
    r.heads.top_induction_head = NS(layer=3, head=0)
    assert verdict(claims.head_copies, r, params) == SUPPORTED
    r.heads.top_induction_head = NS(layer=1, head=1)
    r.patching.sets["copy"].selection.chosen_heads = ["L3H0"]
    made = claims.head_copies(r, params.claims, params)
    assert made.verdict == SUPPORTED and "L3H0" in str(made.measured)


def test_spacing_is_tested_on_paired_contexts(params):
    r = results()
    r.patching.examples.spacing.p_value = 0.001
    assert verdict(claims.spacing, r, params) == CONTRADICTED


def test_named_head(params):
    r = results()
    r.heads.configured_head.to_previous_answer = 0.1
    assert verdict(claims.named_head, r, params) == CONTRADICTED
    r.heads.configured_head = None
    assert verdict(claims.named_head, r, params) == NOT_TESTABLE


def test_head_attends(params):
    r = results()
    r.heads.top_heads = [head_summary(2, 1, 0.05, 0.1)]
    assert verdict(claims.head_attends, r, params) == CONTRADICTED
    r.heads.top_heads = [head_summary(2, 1, 0.2, 0.5)]
    assert verdict(claims.head_attends, r, params) == INCONCLUSIVE


def test_attending_is_not_copying(params):
    r = results()
    r.heads.copy_dla_family.low, r.heads.copy_dla_family.high = grid(-0.8), grid(-0.2)
    assert verdict(claims.head_copies, r, params) == CONTRADICTED  # attends, but pushes the right answer
    r.heads.copy_dla_family.high = grid(0.3)
    assert verdict(claims.head_copies, r, params) == INCONCLUSIVE


def test_induction_heads_are_part_of_the_test(params):
    r = results()
    r.heads.ablations = [head_ablation(2, 1, est(0.05), est(-0.03))]
    assert verdict(claims.induction_copies, r, params) == CONTRADICTED
    r.heads.induction_score = grid(0.1)  # no ablated head is an induction head
    assert verdict(claims.induction_copies, r, params) == NOT_TESTABLE


@pytest.mark.parametrize(("delta", "p_delta", "p_ld", "p_error", "expected"), [
    (-0.5, 0.002, 0.2, 0.01, INCONCLUSIVE),  # no better than random heads on the LD
    (-0.5, 0.002, 0.01, 0.2, INCONCLUSIVE),  # ... or on the error rate: each has its own p
    (0.5, 0.002, 0.01, 0.01, CONTRADICTED),
    (-0.5, 0.3, 0.01, 0.01, INCONCLUSIVE),
    (-0.5, 0.002, 0.001, 0.001, SUPPORTED),
])
def test_head_ablation_error(params, delta, p_delta, p_ld, p_error, expected):
    r = results()
    r.patching.sets = {"copy": error_set(delta, p_delta, p_ld, p_error)}
    assert verdict(claims.head_ablation_error, r, params) == expected


def test_head_ablation_error_needs_an_error_the_model_makes(params):
    r = results()
    r.patching.sets = {"copy": error_set(-0.5, 0.002, 0.01, erring=False)}
    assert verdict(claims.head_ablation_error, r, params) == NOT_APPLICABLE
    r.patching.sets = {"copy": error_set(-0.5, 0.002, 0.01, chosen=False)}
    assert verdict(claims.head_ablation_error, r, params) == NOT_APPLICABLE


def test_the_feature_tested_is_the_one_that_favours_the_error(params):
    r = results()
    s = r.sae.saes["res"]
    s.features["3"] = feature(3, -0.9, -1.0, 2.0)  # the largest attribution, but towards the correct answer
    s.top_by_attribution = [3, 5]
    assert verdict(claims.feature_promotes, r, params) == SUPPORTED
    s.features["5"] = feature(5, 0.4, 1.2, 0.3)  # favours the error, but promotes both
    assert verdict(claims.feature_promotes, r, params) == CONTRADICTED
    s.top_favouring_error = []
    assert verdict(claims.feature_promotes, r, params) == CONTRADICTED


@pytest.mark.parametrize(("delta", "p_ld", "p_error", "expected"), [
    (-0.4, 0.3, 0.01, INCONCLUSIVE), (-0.4, 0.01, 0.3, INCONCLUSIVE), (0.4, 0.02, 0.02, CONTRADICTED)])
def test_feature_ablation(params, delta, p_ld, p_error, expected):
    r = results()
    r.patching.sets["copy"].evaluation.latents = [latent_effect(delta, 0.01, p_ld, p_error)]
    assert verdict(claims.feature_ablation, r, params) == expected
    r.patching.sets["copy"].evaluation = None
    assert verdict(claims.feature_ablation, r, params) == NOT_APPLICABLE


def test_a_latent_is_named_with_its_matches_in_other_seeds_or_called_seed_specific(params):
    r = results()
    match = [NS(seed=1, latent=40, cosine=0.93), NS(seed=2, latent=12, cosine=0.88)]
    found = NS(saes={"res": NS(named=[NS(latent=5, holds=True, matches=match),
                                      NS(latent=7, holds=False, matches=[NS(seed=1, latent=3, cosine=0.41)])])})
    r = claims.Results(r.lens, r.heads, r.behaviour, r.sae, r.patching, found)
    [promotes] = claims.feature_promotes(r, params.claims, params)
    assert "#5 (found again in seeds 1, 2 as #40, #12)" in plain(promotes.measured)
    [ablation] = claims.feature_ablation(r, params.claims, params)
    assert "latents #7, #9:" in plain(ablation.measured)  # #9 is not among the named latents: no summary
    r.seeds.saes["res"].named.append(NS(latent=9, holds=True, matches=match))
    [ablation] = claims.feature_ablation(r, params.claims, params)
    assert "latents #7, #9 (seed-specific but for #9):" in plain(ablation.measured)
    assert plain(claims.seed_note(results(), "res", 5)) == ""  # a build without seeds says nothing


def test_reported_feature(params):
    r = results()
    s = r.sae.saes["res"]
    s.reported, s.features["9"] = [9], feature(9, 0.0, 0.0, 0.0, activation=0.0)
    assert verdict(claims.reported_feature, r, params) == CONTRADICTED
    s.features["9"].activation = 3.0
    assert verdict(claims.reported_feature, r, params) == SUPPORTED


def test_errors_few_shot_is_a_paired_difference(params):
    r = results()
    r.behaviour.error_vs_zero_shot["few_shot"] = est(-0.1)
    assert verdict(claims.errors_few_shot, r, params) == CONTRADICTED
    r.behaviour.error_vs_zero_shot["few_shot"] = est(0.0, -0.02, 0.03)
    assert verdict(claims.errors_few_shot, r, params) == INCONCLUSIVE


def test_carry(params):
    r = results()
    r.behaviour.conditions["zero_shot"].carry_gap = exact(-0.14)  # easier zero-shot, harder few-shot
    assert verdict(claims.carry_harder, r, params) == MIXED
    for c in r.behaviour.conditions.values():
        c.carry_gap = exact(-0.1)
    assert verdict(claims.carry_harder, r, params) == CONTRADICTED


def test_nine_plus_nine_is_its_own_claim(params):
    r = results()
    few = r.behaviour.conditions["few_shot"]
    few.items["9 + 9"].error_prob = est(0.2)
    assert verdict(claims.nine_plus_nine, r, params) == CONTRADICTED
    few.items = {}
    assert verdict(claims.nine_plus_nine, r, params) == NOT_TESTABLE


def test_sequence_errors(params):
    r = results()
    few = r.behaviour.conditions["few_shot"]
    few.classes["sequence"] = est(0.01)
    assert verdict(claims.sequence_errors, r, params) == CONTRADICTED
    few.classes["sequence"] = NS(mean=None, low=None, high=None, n=0)
    assert verdict(claims.sequence_errors, r, params) == NOT_TESTABLE


def test_examples_not_frequency(params):
    r = results()
    r.patching.examples.p_misconception = est(0.001)  # the examples make 6 less likely than the query alone
    assert verdict(claims.examples_not_frequency, r, params) == CONTRADICTED


def test_the_claims_cite_the_studys_numbers_from_params(params):
    table = {c.claim for c in claims.evaluate(results(), params)}
    assert "Errors are rare zero-shot (2.3%) and common few-shot (23.1%)." in table
    changed = make_params(**{"claims.study.error_zero_shot": 0.05})
    assert "Errors are rare zero-shot (5.0%) and common few-shot (23.1%)." in {
        c.claim for c in claims.evaluate(results(), changed)}


def test_carry_is_not_testable_without_sums_that_carry(params):
    r = results()
    for c in r.behaviour.conditions.values():
        c.carry_gap = NS(mean=None, low=None, high=None, n=0, p_value=None)  # max_operand below 5
    assert verdict(claims.carry_harder, r, params) == NOT_TESTABLE
