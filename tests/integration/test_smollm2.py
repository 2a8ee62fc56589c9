"""The bundled model: conversion parity, tokenization, and the logit lens on the real weights."""

import pytest
import torch

from analysis import logit_lens
from analysis.artifacts import StagePaths
from analysis.models import load_gguf_hf
from analysis.prompts import prepare_prompt
from analysis.scoring import score_answers


def test_converted_model_matches_transformers_on_the_same_gguf(smollm2, params):
    hf_model, tokenizer = load_gguf_hf(params.model("smollm2-135m"))
    texts = ["1 + 1 = 2. 2 + 2 = 4. 5 + 5 =", "The capital of France is Paris, and the capital of Italy is"]
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ours = smollm2(ids)
            theirs = hf_model(ids).logits
        # transformer_lens centres the unembedding; logits agree up to a constant per position
        ours, theirs = ours - ours.mean(-1, keepdim=True), theirs - theirs.mean(-1, keepdim=True)
        assert (ours - theirs).abs().max().item() <= 1e-3


def test_smollm2_splits_digits_so_the_space_joins_the_context(smollm2, params):
    prepared = prepare_prompt(smollm2, params.prompt.canonical, params.prompt.answers.model_dump())
    assert prepared.context == params.prompt.canonical + " "
    assert prepared.answers["correct"].token_strs == ("1", "0")
    assert prepared.answers["misconception"].token_strs == ("6",)
    assert prepared.str_tokens[0] == "1"  # no BOS for this model


def test_lens_at_the_last_layer_is_the_models_output(smollm2, params, tmp_path):
    metrics = logit_lens.run(smollm2, params, "smollm2-135m", StagePaths("smollm2-135m", "logit_lens", root=tmp_path))
    assert metrics.n_layers == 30
    assert metrics.lens_vs_output_max_abs_diff < 1e-5
    assert metrics.correct.prob_by_layer[-1] == pytest.approx(metrics.correct.final_prob, abs=1e-6)
    # the model's top token is the one reported first, and it is a real probability
    assert metrics.top_final[0].prob == pytest.approx(max(t.prob for t in metrics.top_final))
    assert 0 < metrics.correct.answer_prob <= metrics.correct.final_prob + 1e-6


def test_answer_probabilities_sum_over_the_next_token_to_one(smollm2, params):
    prepared = prepare_prompt(smollm2, params.prompt.canonical, params.prompt.answers.model_dump())
    with torch.no_grad():
        probs = smollm2(prepared.tokens[None]).softmax(-1)[0, -1]
    digits = [smollm2.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    one_digit = {d: probs[t].item() for d, t in zip(range(10), digits, strict=True)}
    names = list(prepared.answers)
    scores = score_answers(smollm2, [prepared.tokens] * 2, [prepared.answers[n].token_ids for n in names])
    misconception = scores.token_logprob[names.index("misconception")].item()
    assert misconception == pytest.approx(torch.tensor(one_digit[6]).log().item(), abs=1e-5)
    assert sum(one_digit.values()) <= 1.0


def test_heads_stage_on_the_real_model(smollm2, params, tmp_path):
    from helpers import make_params

    from analysis import heads

    small = make_params(**{"family.n_prompts": 8, "stats.bootstrap_resamples": 200,
                           "heads.induction.n_sequences": 8})
    metrics = heads.run(smollm2, small, "smollm2-135m", StagePaths("smollm2-135m", "heads", root=tmp_path))
    assert sum(metrics.dla_parts.values()) == pytest.approx(metrics.dla_total, abs=1e-3)
    assert metrics.dla_total == pytest.approx(
        torch.tensor(metrics.dla).sum().item() + sum(v for k, v in metrics.dla_parts.items() if k != "heads"), abs=1e-3)
    # a pretrained 30-layer model has clear induction heads; random weights would not
    assert metrics.top_induction_head.induction_score > 0.5
    attention = torch.tensor(metrics.context_answer_attention)
    assert 0 <= attention.min() and attention.max() <= 1
    assert metrics.configured_head is None  # none named for this model in params.yaml


def test_behaviour_stage_on_the_real_model(smollm2, tmp_path):
    from helpers import make_params

    from analysis import behaviour

    small = make_params(**{"behaviour.max_operand": 5, "behaviour.n_contexts": 2, "stats.bootstrap_resamples": 200})
    metrics = behaviour.run(smollm2, small, "smollm2-135m", StagePaths("smollm2-135m", "behaviour", root=tmp_path))
    study = metrics.conditions["study_context"]
    # measured on this model: after the study's examples it answers 5 + 5 with 10
    assert study.items["5 + 5"].answers == [10]
    assert study.items["5 + 5"].p_correct > 0.5
    for condition in metrics.conditions.values():
        e = condition.accuracy["all"]
        assert e.n == 36 * condition.n_contexts
        if condition.population:  # one context: the grid is every query, the rate is exact
            assert condition.n_contexts == 1 and e.low is None and e.high is None
        else:
            assert e.low <= e.mean <= e.high
    prior = metrics.frequency.prior
    assert 0 < sum(prior) < 1  # probabilities of 11 exact numbers, not a distribution over them


SMALL_SAE = {"sae_train.corpus.prose_windows": 24, "sae_train.corpus.arithmetic_windows": 16,
             "sae_train.epochs": 2, "sae_train.batch_size": 128, "sae_train.k": 16,
             "models.smollm2-135m.saes.res-l22.d_sae": 256, "family.n_prompts": 8,
             "stats.bootstrap_resamples": 200, "heads.induction.n_sequences": 4, "sae.top_k": 3}


def test_sae_stages_on_the_real_model(smollm2, tmp_path):
    from helpers import make_params

    from analysis import sae, sae_train

    params = make_params(**SMALL_SAE)
    trained = sae_train.run(smollm2, params, "smollm2-135m", StagePaths("smollm2-135m", "sae_train", root=tmp_path))
    record = trained.saes["res-l22"]
    assert (record.d_in, record.d_sae, record.source) == (576, 256, "trained")
    assert record.quality.l0 <= 16 + 1e-6
    assert record.quality.explained_variance > 0.05  # a few dozen steps: better than the mean, not good
    assert (tmp_path / "smollm2-135m" / "sae_train" / "res-l22" / "cfg.json").is_file()
    for p in smollm2.parameters():
        p.requires_grad_(True)  # the stage turns them off; show that it does not need them on
    metrics = sae.run(smollm2, params, "smollm2-135m", StagePaths("smollm2-135m", "sae", root=tmp_path))
    result = metrics.saes["res-l22"]
    assert metrics.answers == {"correct": "1", "misconception": "6"}
    assert result.n_active <= 16 and len(result.top_by_attribution) == 3
    # the attribution metric is the model's own logit difference (the SAE's error term keeps it exact)
    from analysis.heads import compute_head_dla
    from analysis.prompts import prepare_prompt

    prepared = prepare_prompt(smollm2, params.prompt.canonical, params.prompt.answers.model_dump())
    dla = compute_head_dla(smollm2, prepared.tokens[None],
                           torch.tensor([prepared.answers["misconception"].first_token_id]),
                           torch.tensor([prepared.answers["correct"].first_token_id]))
    assert result.metric == pytest.approx(dla.total[0].item(), abs=1e-3)
    assert set(result.spacing) == {"spaced", "unspaced"}
    top = result.features[str(result.top_by_attribution[0])]
    assert top.neuronpedia_url is None and top.ablation_family["correct"].n == 8


def test_spliced_trained_sae_leaves_smollm2_unchanged(smollm2, params):
    from helpers import random_sae

    from analysis import saes
    from analysis.prompts import prepare_prompt

    prepared = prepare_prompt(smollm2, params.prompt.canonical, params.prompt.answers.model_dump())
    hook = params.model("smollm2-135m").saes["res-l22"].hook
    spliced = random_sae(576, 512, kind="topk", k=32, seed=1)
    with torch.no_grad():
        clean = smollm2(prepared.tokens[None])
        through = smollm2.run_with_hooks(prepared.tokens[None],
                                         fwd_hooks=[(hook, saes.splice(spliced, first_position=0))])
    assert (through - clean).abs().max().item() <= 1e-4
