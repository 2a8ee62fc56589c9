"""The benchmark's arithmetic: FLOPs from a model's shapes, scaled workloads, the report."""

import importlib.util
import sys

import pytest
from helpers import REPO, base_params_dict, random_gpt2_small, rotary_model, needs_gpt2_tokenizer

from analysis.params import ParamsError

spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench.py")
bench = sys.modules.setdefault("bench", importlib.util.module_from_spec(spec))  # dataclasses look it up
spec.loader.exec_module(bench)


@needs_gpt2_tokenizer
def test_block_flops_of_gpt2_small_are_twice_its_block_matrices():
    cfg = random_gpt2_small().cfg
    per_layer = 4 * 768 * 768 + 2 * 768 * 3072  # q, k, v, o; MLP in and out
    assert bench.block_flops_per_token(cfg) == 2 * 12 * per_layer == 169_869_312


def test_block_flops_count_grouped_keys_and_a_gated_mlp():
    cfg = rotary_model(n_layers=3).cfg  # d_model 32, 4 query heads and 2 key/value heads of 8, gated MLP of 64
    assert bench.block_flops_per_token(cfg) == 2 * 3 * (32 * 8 * (2 * 4 + 2 * 2) + 3 * 32 * 64)


def test_forward_flops_add_causal_attention_and_the_unembedded_positions():
    cfg = rotary_model(n_layers=3).cfg
    blocks = bench.block_flops_per_token(cfg)
    # a sequence of 3 tokens: its queries attend to 1, 2 and 3 keys; QK and AV, 2 FLOPs each
    attention = 3 * 4 * 8 * (1 + 2 + 3) * 2 * 2
    unembed = 2 * cfg.d_model * cfg.d_vocab
    assert bench.forward_flops(cfg, [3], unembedded=1) == 3 * blocks + attention + unembed
    assert bench.forward_flops(cfg, [3, 3], unembedded=2) == 2 * bench.forward_flops(cfg, [3], unembedded=1)


def test_scaled_params_multiply_only_the_stages_workload():
    raw = base_params_dict()
    doubled = bench.scaled_params(raw, "patching", 2)
    assert doubled.patching.n_pairs == 2 * raw["patching"]["n_pairs"]
    assert doubled.patching.min_erring == 2 * raw["patching"]["min_erring"]
    assert doubled.patching.max_erring == 2 * raw["patching"]["max_erring"]
    assert doubled.family.n_prompts == raw["family"]["n_prompts"]
    quarter = bench.scaled_params(raw, "heads", 0.25)
    assert quarter.family.n_prompts == raw["family"]["n_prompts"] // 4
    assert quarter.heads.induction.n_sequences == raw["heads"]["induction"]["n_sequences"] // 4
    assert raw["family"]["n_prompts"] == base_params_dict()["family"]["n_prompts"]  # the input is left alone


def test_scaled_params_that_the_checks_refuse_are_refused():
    with pytest.raises(ParamsError):
        bench.scaled_params(base_params_dict(), "logit_lens", 10_000)  # more prompts than the cap


def test_report_marks_each_target_and_the_table_shows_it(capsys):
    report = bench.Report({"cpu": "x"})
    report.add("fast enough", 5.0, "×", "≥ 3", lambda v: v >= 3)
    report.add("too slow", 4.3, "×", "≥ 20", lambda v: v >= 20)
    report.add("not measured", None, "s", "≤ 2", lambda v: v <= 2, note="run make first")
    assert [f.met for f in report.figures] == [True, False, None]
    assert "MISSED" in capsys.readouterr().out
    table = bench.markdown(report).splitlines()
    assert table[2:] == ["| fast enough | 5 × | ≥ 3 | yes |", "| too slow | 4.3 × | ≥ 20 | no |",
                         "| not measured | — | ≤ 2 |  |"]


def test_the_bench_knows_every_stage_in_pipeline_order():
    from analysis.params import stages

    assert bench.STAGES == tuple(stages()) and set(bench.WORKLOAD) == set(stages())
