"""Answer preparation and scoring, on a character tokenizer and on GPT-2's real tokenizer."""

import pytest
import torch
from helpers import char_tokenizer, gpt2_tokenizer, tiny_model

from analysis.prompts import answer_logprobs, prepare_prompt

ANSWERS = {"correct": " 10", "misconception": " 6"}
PROMPT = "1 + 1 = 2. 2 + 2 = 4. 5 + 5 ="


def test_shared_space_moves_into_the_context_when_digits_split():
    model = tiny_model(char_tokenizer())
    prepared = prepare_prompt(model, PROMPT, ANSWERS)
    assert prepared.context == PROMPT + " "
    assert prepared.str_tokens[0] == "<bos>" and prepared.str_tokens[-1] == " "
    assert prepared.answers["correct"].token_strs == ("1", "0")
    assert prepared.answers["misconception"].token_strs == ("6",)
    assert [model.tokenizer.decode([t]) for t in prepared.first_token_ids] == ["1", "6"]


def test_no_bos_when_the_model_does_not_use_one():
    model = tiny_model(char_tokenizer(), prepend_bos=False)
    prepared = prepare_prompt(model, PROMPT, ANSWERS)
    assert prepared.str_tokens[0] == "1"
    assert len(prepared.tokens) == len(PROMPT) + 1


def test_gpt2_tokenizer_keeps_the_prompt_and_single_token_answers():
    model = tiny_model(gpt2_tokenizer(), d_model=16, n_heads=2, n_layers=1)
    prepared = prepare_prompt(model, PROMPT, ANSWERS)
    assert prepared.context == PROMPT
    assert len(prepared.tokens) == 17 and prepared.str_tokens[0] == "<|endoftext|>"
    assert prepared.answers["misconception"].token_ids == (718,)
    assert prepared.answers["correct"].token_ids == (838,)


def test_an_answer_that_is_a_prefix_of_another_is_rejected():
    model = tiny_model(char_tokenizer())
    with pytest.raises(ValueError, match="no token of its own"):
        prepare_prompt(model, PROMPT, {"correct": " 10", "misconception": " 1"})


def test_whole_answer_score_is_the_teacher_forced_sum_of_token_logprobs():
    model = tiny_model(char_tokenizer(), seed=3)
    prepared = prepare_prompt(model, PROMPT, ANSWERS)
    scores = answer_logprobs(model, prepared)
    ids = prepared.tokens.tolist()
    expected = 0.0
    for token in prepared.answers["correct"].token_ids:  # '1' then '0', one forward pass each
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).log_softmax(-1)[0, -1]
        expected += logprobs[token].item()
        ids.append(token)
    assert scores["correct"] == pytest.approx(expected, abs=1e-5)
    assert scores["correct"] < 0 and scores["misconception"] < 0
