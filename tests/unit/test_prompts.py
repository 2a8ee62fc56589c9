"""Answer preparation and scoring, on a character tokenizer and on GPT-2's real tokenizer."""

import pytest
import torch
from helpers import char_tokenizer, gpt2_tokenizer, tiny_model, needs_gpt2_tokenizer

from analysis.prompts import (
    equal_length_batches,
    few_shot_family,
    parse_arithmetic,
    prepare_arithmetic,
    prepare_prompt,
    run_by_length,
    token_positions,
)

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


@needs_gpt2_tokenizer
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


def test_arithmetic_prompts_round_trip_and_locate_their_answers():
    prompt = parse_arithmetic(PROMPT)
    assert prompt.shots == ((1, 1), (2, 2)) and prompt.query == (5, 5) and prompt.text == PROMPT
    assert [PROMPT[a:b] for a, b in prompt.shot_answer_spans()] == ["2", "4"]
    assert [PROMPT[a:b] for a, b in prompt.query_operand_spans()] == ["5", "5"]
    for bad in ("1 + 1 = 3. 5 + 5 =", "5 + 5", "1 + 1 = 2. 5 + 5 = 10", "five + 5 ="):
        with pytest.raises(ValueError):
            parse_arithmetic(bad)


def test_the_family_is_seeded_and_keeps_copy_and_answer_apart():
    family = few_shot_family(40, 2, 9, seed=3)
    assert [p.text for p in family] == [p.text for p in few_shot_family(40, 2, 9, seed=3)]
    assert [p.text for p in family] != [p.text for p in few_shot_family(40, 2, 9, seed=4)]
    assert len({p.text for p in family}) == 40
    for p in family:
        assert len(p.shots) == 2 and all(0 <= x <= 9 for pair in (*p.shots, p.query) for x in pair)
        assert all(str(s)[0] != str(p.answer)[0] for s in p.shot_answers)
        assert parse_arithmetic(p.text) == p


@needs_gpt2_tokenizer
def test_token_positions_follow_the_answers_through_multi_token_numbers():
    model = tiny_model(gpt2_tokenizer(), d_model=16, n_heads=2, n_layers=1)
    prompt = parse_arithmetic("7 + 8 = 15. 2 + 2 = 4. 5 + 5 =")
    prepared = prepare_prompt(model, prompt.text, ANSWERS)
    spans = token_positions(model, prepared, prompt.shot_answer_spans())
    assert [[prepared.str_tokens[i] for i in s] for s in spans] == [[" 15"], [" 4"]]


def test_spacing_variants_get_their_answers_in_their_own_style():
    model = tiny_model(char_tokenizer())
    prompt, prepared = prepare_arithmetic(model, "1+1=2. 2+2=4. 5+5=", ANSWERS)
    assert prompt.query == (5, 5) and prepared.context == "1+1=2. 2+2=4. 5+5="
    assert prepared.answers["correct"].text == "10" and prepared.answers["misconception"].text == "6"
    _, spaced = prepare_arithmetic(model, PROMPT, ANSWERS)
    assert spaced.answers["correct"].text == " 10" and spaced.context == PROMPT + " "


def test_equal_length_batches_cover_every_index_once_in_unpadded_batches():
    keys = [3, 1, 3, 2, 3, 1, 3]
    batches = list(equal_length_batches(keys, batch_size=2))
    assert batches == [[1, 5], [3], [0, 2], [4, 6]]
    assert list(equal_length_batches(keys)) == [[1, 5], [3], [0, 2, 4, 6]]


def test_run_by_length_puts_each_row_back_in_prompt_order():
    model = tiny_model(char_tokenizer())
    texts = ["1 + 1 =", "12 + 1 =", "2 + 2 =", "3 + 30 =", "4 + 4 ="]
    prepared = [prepare_prompt(model, t, {"a": " 1", "b": " 2"}) for t in texts]
    seen = []

    def compute(tokens, indices):
        seen.append((tokens.shape[0], len({len(prepared[i].tokens) for i in indices})))
        return tokens.sum(-1), tokens[:, :1].float()

    sums, firsts = run_by_length(prepared, compute, batch_size=2)
    assert sums.tolist() == [int(p.tokens.sum()) for p in prepared]
    assert torch.equal(firsts[:, 0], torch.stack([p.tokens[0] for p in prepared]).float())
    assert sorted(seen) == [(1, 1), (2, 1), (2, 1)]  # 3 prompts of one length (2 + 1), 2 of another
