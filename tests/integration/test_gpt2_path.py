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


# One small run of every stage, shared by the tests below and by the paper built from it.
SMALL = {"family.n_prompts": 4, "stats.bootstrap_resamples": 200, "heads.induction.n_sequences": 4,
         "behaviour.max_operand": 5, "behaviour.n_contexts": 2, "behaviour.neutral_contexts": ["The number is"],
         "sae_train.corpus.prose_windows": 8, "sae_train.corpus.arithmetic_windows": 6, "sae.top_k": 2,
         "patching.n_pairs": 4, "patching.n_patched": 2, "patching.last_positions": 1, "patching.top_heads": 2,
         "patching.random_draws": 2}


@pytest.fixture(scope="module")
def gpt2_results(gpt2_random, tmp_path_factory):
    """Every stage on the random GPT-2, into a folder laid out like data/. The pretrained SAEs
    come from the hub; random SAEs of the releases' exact shapes stand in for them, and the
    first pairs are patched as if the random model erred on them, so every measurement runs."""
    from helpers import make_params, random_sae

    from analysis import behaviour, heads, patching, sae, sae_train, saes

    stand_ins = {"mlp-l9": random_sae(768, 24576, seed=1), "res-l9": random_sae(768, 24576, seed=2)}
    params = make_params(**SMALL)
    root = tmp_path_factory.mktemp("gpt2") / "data"
    metrics = {}
    with pytest.MonkeyPatch.context() as mp:
        for module in (saes, sae_train, patching):
            mp.setattr(module, "load_sae", lambda key, name, spec, train_dir, device="cpu": stand_ins[name])
        mp.setattr(patching, "patched_subset", lambda errs, n: (list(range(min(n, len(errs)))), patching.ERRING))
        for module in (logit_lens, heads, behaviour, sae_train, sae, patching):
            stage = module.__name__.rsplit(".", 1)[1]
            metrics[stage] = module.run(gpt2_random, params, "gpt2-small", StagePaths("gpt2-small", stage, root=root))
    return root, metrics


def test_heads_stage_runs_on_gpt2_shape_and_reports_l8h6(gpt2_results):
    metrics = gpt2_results[1]["heads"]
    assert (metrics.n_layers, metrics.n_heads) == (12, 12)
    assert (metrics.configured_head.layer, metrics.configured_head.head) == (8, 6)
    assert 1 <= metrics.configured_head.rank_by_family_attention <= 144
    assert len(metrics.configured_head.to_each_operand) == 2
    assert [8, 6] == metrics.figure_heads[0]
    assert sum(metrics.dla_parts.values()) == pytest.approx(metrics.dla_total, abs=1e-3)
    assert metrics.n_copy_prompts == 4  # GPT-2 writes every number below 1000 as one token: no copy left out


def test_behaviour_stage_runs_on_gpt2_shape(gpt2_results):
    metrics = gpt2_results[1]["behaviour"]
    assert metrics.n_pairs == 36 and set(metrics.conditions) == {"zero_shot", "few_shot", "study_context"}
    assert len(metrics.frequency.zero_shot) == 11


def test_sae_stages_on_gpt2_shape_with_the_releases_shapes(gpt2_results):
    """The GPT-2 code path of the SAEs: feature 1076, Neuronpedia links, no training."""
    root, metrics = gpt2_results
    trained = metrics["sae_train"]
    assert set(trained.saes) == {"mlp-l9", "res-l9"}
    assert trained.saes["mlp-l9"].hook == "blocks.9.hook_mlp_out" and trained.saes["mlp-l9"].training is None
    assert '"release": "gpt2-small-res-jb"' in (root / "gpt2-small" / "sae_train" / "res-l9" / "source.json").read_text()
    for name in ("mlp-l9", "res-l9"):
        assert metrics["sae"].saes[name].reported == [1076]
        assert "1076" in metrics["sae"].saes[name].features
    assert metrics["sae"].saes["res-l9"].features["1076"].neuronpedia_url == "https://www.neuronpedia.org/gpt2-small/9-res-jb/1076"
    assert metrics["sae"].saes["mlp-l9"].features["1076"].neuronpedia_url is None


def test_patching_stage_runs_on_gpt2_shape(gpt2_results, params):
    metrics = gpt2_results[1]["patching"]
    assert (metrics.n_layers, metrics.n_heads) == (12, 12)
    for result in metrics.sets.values():
        assert result.n_pairs == 4 and result.n_patched == 2  # GPT-2 writes each number as one token: none dropped
        assert len(result.head_attribution) == 12 and len(result.head_attribution[0]) == 12
        assert [(e.sae, e.hook, e.n_latents) for e in result.latents] == [
            ("mlp-l9", "blocks.9.hook_mlp_out", 24576), ("res-l9", "blocks.9.hook_resid_pre", 24576)]
        assert all(len(e.top) == 5 and len(e.random_ablated) == 2 for e in result.latents)
    assert metrics.examples.with_examples == params.prompt.canonical


def test_the_paper_renders_from_gpt2_results_with_its_gpt2_branches(gpt2_results, tmp_path):
    """The manuscript's GPT-2 branches (the named head L8H6, the study's feature, two SAEs)
    render, and every number in the paper comes from those results or params.yaml."""
    from analysis import claims, numbercheck, paper
    from analysis.params import load_params

    root, metrics = gpt2_results
    html, pdf = paper.build("gpt2-small", out_dir=tmp_path, data_dir=root)
    text = html.read_text()
    assert pdf.read_bytes().startswith(b"%PDF")
    assert "GPT-2 small" in text and "L8H6" in text and "#1076" in text and "mlp-l9" in text
    table = claims.evaluate(claims.Results(metrics["logit_lens"], metrics["heads"], metrics["behaviour"],
                                           metrics["sae"], metrics["patching"]), load_params())
    named = next(c for c in table if c.claim.startswith("Head L8H6"))
    assert named.verdict != claims.NOT_TESTABLE and named.measured in text
    assert [c.verdict for c in table if "#1076" in c.claim] != [claims.NOT_TESTABLE]
    documents = [m.model_dump(mode="json") for m in metrics.values()] + [load_params().model_dump(mode="json")]
    assert numbercheck.unexplained(text, documents) == [] and numbercheck.typography(text) == []


def test_results_strings_cannot_inject_markup_or_embed_files_into_the_paper(gpt2_results, tmp_path):
    """Whoever can write to the DVC remote writes the results' strings: planted markup must
    reach the paper as text, and pandoc must embed no file that it names."""
    import base64
    import json
    import re
    import shutil

    from analysis import paper

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-4f1c9e-not-for-the-paper")
    payloads = [f'x <img src="{secret}">', f"![x]({secret})", '<img src=x onerror="alert(1)">']
    data = tmp_path / "data"
    shutil.copytree(gpt2_results[0], data)
    lens_file = data / "gpt2-small" / "logit_lens.json"
    lens = json.loads(lens_file.read_text())
    lens["model_label"] = payloads[0]
    lens["top_final"][0]["token"] = payloads[1]
    lens_file.write_text(json.dumps(lens))
    patching_file = data / "gpt2-small" / "patching.json"
    results = json.loads(patching_file.read_text())
    results["sets"]["copy"]["description"] = payloads[2]
    patching_file.write_text(json.dumps(results))

    html = paper.build("gpt2-small", out_dir=tmp_path / "out", data_dir=data)[0].read_text()
    for leak in ("SECRET-4f1c9e", base64.b64encode(secret.read_bytes()).decode()[:24]):
        assert leak not in html
    assert re.search(r"<[^<>]*\bonerror", html) is None  # no tag carries the handler; the text may
    assert "<img src=x" not in html and f'<img src="{secret}"' not in html
    assert "&lt;img src=" in html  # the label is shown, as text
