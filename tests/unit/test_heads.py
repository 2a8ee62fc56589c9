"""Head scores against hand-built cases, and the DLA decomposition's exactness."""

import pytest
import torch
from helpers import char_tokenizer, make_params, tiny_model
from transformer_lens import HookedTransformer, HookedTransformerConfig

from analysis import heads
from analysis.artifacts import StagePaths
from analysis.prompts import parse_arithmetic, prepare_prompt, token_positions


def positional_head_model(shift: int, n_ctx: int = 16, strength: float = 200.0):
    """One attention-only layer, one head, no norm: the residual is a one-hot position
    code, and the head's query at position i matches the key at position i - shift."""
    cfg = HookedTransformerConfig(n_layers=1, d_model=n_ctx, n_heads=1, d_head=n_ctx, n_ctx=n_ctx,
                                  d_vocab=len(char_tokenizer()), attn_only=True, normalization_type=None,
                                  act_fn="relu", default_prepend_bos=True, device="cpu", seed=0)
    model = HookedTransformer(cfg, tokenizer=char_tokenizer(), move_to_device=False)
    eye = torch.eye(n_ctx)
    with torch.no_grad():
        model.embed.W_E.zero_()
        model.pos_embed.W_pos.copy_(eye)
        model.blocks[0].attn.W_Q.copy_(strength * eye[None])
        model.blocks[0].attn.W_K.copy_(eye.roll(shift, dims=1)[None])  # key at j answers query j + shift
        model.blocks[0].attn.W_V.zero_()
    return model.eval()


def test_a_previous_token_head_scores_one():
    induction, previous = heads.compute_induction_scores(positional_head_model(shift=1), n_sequences=4,
                                                         half_length=6, seed=0)
    assert previous.shape == (1, 1)
    assert previous.item() == pytest.approx(1.0, abs=1e-3)
    assert induction.item() < 0.01


def test_a_head_looking_half_minus_one_back_scores_one_on_induction():
    half = 6
    induction, previous = heads.compute_induction_scores(positional_head_model(shift=half - 1), n_sequences=4,
                                                         half_length=half, seed=0)
    assert induction.item() == pytest.approx(1.0, abs=1e-3)
    assert previous.item() < 0.3  # only the first queries, which cannot look far enough back


def test_pattern_rows_sum_to_one():
    model = tiny_model(char_tokenizer(), n_layers=2)
    patterns = heads._patterns(model, model.to_tokens("1 + 1 = 2. 5 + 5 =")[0])
    assert patterns.shape[:2] == (2, 4)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(patterns.shape[:-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("normalization", ["LN", "RMS"])
def test_head_dla_plus_other_parts_equals_the_logit_difference(normalization):
    model = tiny_model(char_tokenizer(), n_layers=3, normalization=normalization, seed=5)
    model.load_and_process_state_dict({k: v.clone() for k, v in model.state_dict().items()}, fold_ln=True)
    tokens = model.to_tokens(["1 + 1 = 2. 5 + 5 =", "2 + 2 = 4. 3 + 3 ="])
    plus, minus = torch.tensor([8, 9]), torch.tensor([3, 4])
    result = heads.compute_head_dla(model, tokens, plus, minus)
    assert result.per_head.shape == (2, 3, 4)
    torch.testing.assert_close(result.parts_sum(), result.total, atol=1e-3, rtol=0)
    # the same per-head numbers as transformer_lens' own decomposition
    _, cache = model.run_with_cache(tokens)
    stack = cache.stack_head_results(layer=-1, pos_slice=-1)
    expected = cache.logit_attrs(stack, tokens=plus, incorrect_tokens=minus, pos_slice=-1)
    torch.testing.assert_close(result.per_head.permute(1, 2, 0).reshape(12, 2), expected, atol=1e-5, rtol=1e-4)


def test_final_attention_sums_the_answer_tokens():
    model = tiny_model(char_tokenizer(), n_layers=2, seed=2)
    prompt = parse_arithmetic("1 + 1 = 2. 7 + 8 = 15. 5 + 5 =")
    prepared = prepare_prompt(model, prompt.text, {"c": " 10", "m": " 6"})
    shots = token_positions(model, prepared, prompt.shot_answer_spans())
    operands = token_positions(model, prepared, prompt.query_operand_spans())
    assert [[prepared.str_tokens[i] for i in span] for span in shots] == [["2"], ["1", "5"]]
    assert [[prepared.str_tokens[i] for i in span] for span in operands] == [["5"], ["5"]]
    attn = heads.compute_final_attention(model, prepared.tokens[None], [shots], [operands])
    pattern = heads._patterns(model, prepared.tokens)[:, :, -1]  # (layer, head, key)
    torch.testing.assert_close(attn.to_shot_answers[0, ..., 1], pattern[..., shots[1]].sum(-1))
    torch.testing.assert_close(attn.to_query_operands[0, ..., 0], pattern[..., operands[0][0]])


def test_stage_ranks_heads_and_reports_the_configured_one(tmp_path):
    model = tiny_model(char_tokenizer(), n_layers=2, seed=4)
    params = make_params(**{"family.n_prompts": 6, "heads.top_k": 3, "stats.bootstrap_resamples": 200,
                            "heads.induction.n_sequences": 4, "heads.induction.half_length": 8,
                            "models.smollm2-135m.shape": {"n_layers": 2, "n_heads": 4, "d_model": 32, "d_vocab": 46, "n_ctx": 128},
                            "models.smollm2-135m.configured_head": {"layer": 1, "head": 2},
                            "models.smollm2-135m.saes": {}})
    metrics = heads.run(model, params, "smollm2-135m", StagePaths("smollm2-135m", "heads", root=tmp_path))
    means = [h.family_mean for h in metrics.top_heads]
    assert means == sorted(means, reverse=True) and len(means) == 3
    for h in metrics.top_heads:
        assert h.family_low <= h.family_mean <= h.family_high
        assert h.family_mean == pytest.approx(metrics.context_answer_attention_family.mean[h.layer][h.head])
    assert metrics.configured_head.layer == 1 and 1 <= metrics.configured_head.rank_by_family_attention <= 8
    assert sum(metrics.dla_parts.values()) == pytest.approx(metrics.dla_total, abs=1e-3)
    loaded, tensors = heads.load_results(StagePaths("smollm2-135m", "heads", root=tmp_path))
    assert loaded == metrics and tensors["family_prev_answer_attention"].shape == (6, 2, 4)
    assert [1, 2] in metrics.figure_heads


def test_zero_ablating_a_head_equals_removing_its_output_weights():
    model = tiny_model(char_tokenizer(), n_layers=2, seed=6)
    tokens = model.to_tokens("1 + 1 = 2. 5 + 5 =")
    with torch.no_grad():
        ablated = model.run_with_hooks(tokens, fwd_hooks=heads.head_ablation_hooks(1, 2))
        model.blocks[1].attn.W_O[2] = 0.0
        without = model(tokens)
    torch.testing.assert_close(ablated, without, atol=1e-5, rtol=1e-5)


def test_mean_ablation_uses_the_heads_mean_output():
    model = tiny_model(char_tokenizer(), n_layers=2, seed=7)
    prepared = [prepare_prompt(model, t, {"c": " 10", "m": " 6"}) for t in ("1 + 1 = 2. 5 + 5 =", "2 + 2 =")]
    mean = heads.mean_head_output(model, prepared, layer=0, head=1)
    zs = []
    for p in prepared:
        _, cache = model.run_with_cache(p.tokens[None])
        zs.append(cache["blocks.0.attn.hook_z"][0, :, 1])
    torch.testing.assert_close(mean, torch.cat(zs).mean(0))


def test_token_labels_leave_space_tokens_blank_and_mark_inner_spaces():
    from analysis.heads_plots import token_label

    assert [token_label(t) for t in ("1", " ", " 10", "", "  ")] == ["1", "", "_10", "∅", ""]
