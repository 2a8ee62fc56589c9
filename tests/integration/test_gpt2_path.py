"""The gpt2-small code path, offline: GPT-2 small's exact shape, its real tokenizer, random
weights. The numbers mean nothing; the shapes, token ids and invariants must hold."""

import pytest
from helpers import random_gpt2_small

from analysis import logit_lens
from analysis.artifacts import StagePaths
from analysis.models import check_shape


@pytest.fixture(scope="module")
def gpt2_random():
    return random_gpt2_small()


def test_random_gpt2_has_the_declared_shape(gpt2_random, params):
    check_shape("gpt2-small", gpt2_random, params.model("gpt2-small"))


def test_logit_lens_stage_runs_on_gpt2_shape(gpt2_random, params, tmp_path):
    paths = StagePaths("gpt2-small", "logit_lens", root=tmp_path)
    metrics = logit_lens.run(gpt2_random, params, "gpt2-small", paths)
    assert metrics.n_layers == 12
    assert metrics.prompt == params.prompt.canonical  # nothing shared: " 6" and " 10" are single tokens
    assert len(metrics.prompt_tokens) == 17 and metrics.prompt_tokens[0] == "<|endoftext|>"
    assert (metrics.misconception.first_token_id, metrics.correct.first_token_id) == (718, 838)
    assert 0 < metrics.misconception.answer_prob <= metrics.misconception.final_prob
    assert metrics.lens_vs_output_max_abs_diff < 1e-5


def test_heads_stage_runs_on_gpt2_shape_and_reports_l8h6(gpt2_random, tmp_path):
    from helpers import make_params

    from analysis import heads

    params = make_params(**{"family.n_prompts": 4, "stats.bootstrap_resamples": 200,
                            "heads.induction.n_sequences": 4})
    metrics = heads.run(gpt2_random, params, "gpt2-small", StagePaths("gpt2-small", "heads", root=tmp_path))
    assert (metrics.n_layers, metrics.n_heads) == (12, 12)
    assert (metrics.configured_head.layer, metrics.configured_head.head) == (8, 6)
    assert 1 <= metrics.configured_head.rank_by_family_attention <= 144
    assert len(metrics.configured_head.to_each_operand) == 2
    assert [8, 6] == metrics.figure_heads[0]
    assert sum(metrics.dla_parts.values()) == pytest.approx(metrics.dla_total, abs=1e-3)


def test_behaviour_stage_runs_on_gpt2_shape(gpt2_random, tmp_path):
    from helpers import make_params

    from analysis import behaviour

    params = make_params(**{"behaviour.max_operand": 5, "behaviour.n_contexts": 1, "stats.bootstrap_resamples": 200,
                            "behaviour.neutral_contexts": ["The number is"]})
    metrics = behaviour.run(gpt2_random, params, "gpt2-small", StagePaths("gpt2-small", "behaviour", root=tmp_path))
    assert metrics.n_pairs == 36 and set(metrics.conditions) == {"zero_shot", "few_shot", "study_context"}
    assert len(metrics.frequency.zero_shot) == 11


def test_sae_stages_on_gpt2_shape_with_the_releases_shapes(gpt2_random, tmp_path, monkeypatch):
    """The pretrained SAEs come from the hub; here random SAEs of the releases' exact shapes
    stand in for them, so the GPT-2 code path (feature 1076, Neuronpedia links) runs."""
    from helpers import make_params, random_sae

    from analysis import sae, sae_train, saes

    stand_ins = {"mlp-l9": random_sae(768, 24576, seed=1), "res-l9": random_sae(768, 24576, seed=2)}
    for module in (saes, sae_train):
        monkeypatch.setattr(module, "load_sae", lambda key, name, spec, train_dir, device="cpu": stand_ins[name])
    params = make_params(**{"sae_train.corpus.prose_windows": 8, "sae_train.corpus.arithmetic_windows": 6,
                            "family.n_prompts": 4, "stats.bootstrap_resamples": 200,
                            "heads.induction.n_sequences": 4, "sae.top_k": 2})
    trained = sae_train.run(gpt2_random, params, "gpt2-small", StagePaths("gpt2-small", "sae_train", root=tmp_path))
    assert set(trained.saes) == {"mlp-l9", "res-l9"}
    assert trained.saes["mlp-l9"].hook == "blocks.9.hook_mlp_out" and trained.saes["mlp-l9"].training is None
    source = tmp_path / "gpt2-small" / "sae_train" / "res-l9" / "source.json"
    assert '"release": "gpt2-small-res-jb"' in source.read_text()
    metrics = sae.run(gpt2_random, params, "gpt2-small", StagePaths("gpt2-small", "sae", root=tmp_path))
    for name in ("mlp-l9", "res-l9"):
        assert metrics.saes[name].reported == [1076]
        assert "1076" in metrics.saes[name].features
    assert metrics.saes["res-l9"].features["1076"].neuronpedia_url == "https://www.neuronpedia.org/gpt2-small/9-res-jb/1076"
    assert metrics.saes["mlp-l9"].features["1076"].neuronpedia_url is None


def test_patching_stage_runs_on_gpt2_shape(gpt2_random, tmp_path, monkeypatch):
    """With random SAEs of the releases' shapes (their stats from sae_train), and the first
    pairs taken as if the random model erred on them, so that every measurement runs."""
    from helpers import make_params, random_sae

    from analysis import patching, sae_train

    stand_ins = {"mlp-l9": random_sae(768, 24576, seed=1), "res-l9": random_sae(768, 24576, seed=2)}
    for module in (patching, sae_train):
        monkeypatch.setattr(module, "load_sae", lambda key, name, spec, train_dir, device="cpu": stand_ins[name])
    monkeypatch.setattr(patching, "patched_subset", lambda errs, n: (list(range(min(n, len(errs)))), patching.ERRING))
    params = make_params(**{"patching.n_pairs": 4, "patching.n_patched": 2, "patching.last_positions": 1,
                            "patching.top_heads": 2, "patching.random_draws": 2, "stats.bootstrap_resamples": 200,
                            "sae_train.corpus.prose_windows": 8, "sae_train.corpus.arithmetic_windows": 6})
    sae_train.run(gpt2_random, params, "gpt2-small", StagePaths("gpt2-small", "sae_train", root=tmp_path))
    metrics = patching.run(gpt2_random, params, "gpt2-small", StagePaths("gpt2-small", "patching", root=tmp_path))
    assert (metrics.n_layers, metrics.n_heads) == (12, 12)
    for result in metrics.sets.values():
        assert result.n_pairs == 4 and result.n_patched == 2  # GPT-2 writes each number as one token: none dropped
        assert len(result.head_attribution) == 12 and len(result.head_attribution[0]) == 12
        assert [(e.sae, e.hook, e.n_latents) for e in result.latents] == [
            ("mlp-l9", "blocks.9.hook_mlp_out", 24576), ("res-l9", "blocks.9.hook_resid_pre", 24576)]
        assert all(len(e.top) == 5 and len(e.random_ablated) == 2 for e in result.latents)
    assert metrics.examples.with_examples == params.prompt.canonical
