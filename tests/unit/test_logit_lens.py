"""The logit lens on a tiny model: invariants that hold for any weights."""

import pytest
import torch
from helpers import char_tokenizer, make_params, tiny_model

from analysis import logit_lens, logit_lens_plots
from analysis.artifacts import StagePaths
from analysis.prompts import prepare_prompt


def test_last_layer_lens_equals_the_model_output():
    for normalization in ("LN", "RMS"):
        model = tiny_model(char_tokenizer(), n_layers=3, normalization=normalization)
        tokens = model.to_tokens(["1 + 1 = 2. 5 + 5 =", "2 + 2 = 4. 3 + 3 ="])
        lens = logit_lens.compute_logit_lens(model, tokens)
        assert lens.probs.shape == (2, 3, model.cfg.d_vocab)
        torch.testing.assert_close(lens.probs[:, -1], lens.output_probs, atol=1e-6, rtol=0)
        torch.testing.assert_close(lens.probs.sum(-1), torch.ones(2, 3), atol=1e-5, rtol=0)


def test_an_early_layer_differs_from_the_output():
    model = tiny_model(char_tokenizer(), n_layers=3, seed=1)
    lens = logit_lens.compute_logit_lens(model, model.to_tokens("1 + 1 = 2. 5 + 5 ="))
    assert (lens.probs[0, 0] - lens.output_probs[0]).abs().max() > 1e-4


def test_stage_writes_metrics_that_match_the_tensors(tmp_path):
    model = tiny_model(char_tokenizer(), n_layers=2)
    params = make_params(**{"logit_lens.top_k": 4})
    paths = StagePaths("smollm2-135m", "logit_lens", root=tmp_path)
    metrics = logit_lens.run(model, params, "smollm2-135m", paths)
    loaded, tensors = logit_lens.load_results(paths)
    assert loaded == metrics
    assert loaded.prompt == params.prompt.canonical + " "
    assert [t.prob for t in loaded.top_final] == sorted((t.prob for t in loaded.top_final), reverse=True)
    assert len(loaded.top_final) == 4
    torch.testing.assert_close(tensors["lens_probs"][:, 1], torch.tensor(loaded.misconception.prob_by_layer))
    assert abs(loaded.correct.prob_by_layer[-1] - loaded.correct.final_prob) < 1e-6
    # '6' is a single token here: the exact answer is that token, then no further digit
    assert 0 < loaded.misconception.answer_prob < loaded.misconception.final_prob
    assert loaded.lens_vs_output_max_abs_diff < 1e-6


def test_plot_draws_one_line_per_answer_from_the_metrics(tmp_path):
    model = tiny_model(char_tokenizer(), n_layers=2)
    paths = StagePaths("m", "logit_lens", root=tmp_path)
    metrics = logit_lens.run(model, make_params(), "smollm2-135m", paths)
    fig = logit_lens_plots.plot_logit_lens(metrics)
    left = fig.axes[0]
    assert len(left.lines) == 2
    ys = sorted(tuple(line.get_ydata()) for line in left.lines)
    assert ys == sorted([tuple(metrics.correct.prob_by_layer), tuple(metrics.misconception.prob_by_layer)])
    prepared = prepare_prompt(model, metrics.prompt_as_written, {"c": " 10", "m": " 6"})
    assert metrics.prompt_tokens == list(prepared.str_tokens)


def test_the_family_lens_has_a_band_per_layer(tmp_path):
    model = tiny_model(char_tokenizer(), n_layers=3)
    params = make_params(**{"family.n_prompts": 6, "stats.bootstrap_resamples": 200})
    metrics = logit_lens.run(model, params, "smollm2-135m", StagePaths("m", "logit_lens", root=tmp_path))
    family = metrics.family
    assert family.n_prompts == 6
    for band in (family.correct, family.previous_answer):
        assert len(band.mean) == len(band.low) == len(band.high) == 3
        assert all(lo - 1e-9 <= m <= hi + 1e-9 for lo, m, hi in zip(band.low, band.mean, band.high, strict=True))
    _, tensors = logit_lens.load_results(StagePaths("m", "logit_lens", root=tmp_path))
    assert tensors["family_lens"].shape == (6, 3, 2)
    assert family.correct.mean[-1] == pytest.approx(tensors["family_lens"][:, -1, 0].mean().item(), abs=1e-6)
