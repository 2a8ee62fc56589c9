"""The gpt2-small code path, offline and in-process: GPT-2 small's exact shape, its real
tokenizer, random weights. The numbers mean nothing; the shapes, token ids and invariants
must hold. Every stage and the paper, through the real hub loaders, run in
tests/pipeline/test_gpt2_hub.py."""

import pytest
from helpers import needs_gpt2_tokenizer, random_gpt2_small

from analysis import logit_lens
from analysis.artifacts import StagePaths
from analysis.models import check_shape


pytestmark = needs_gpt2_tokenizer


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
