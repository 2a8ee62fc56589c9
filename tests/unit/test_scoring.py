"""Whole-answer scoring and greedy answers, checked by hand on a tiny model."""

import pytest
import torch
from helpers import char_tokenizer, gpt2_tokenizer, rotary_model, tiny_model, needs_gpt2_tokenizer

from analysis.prompts import prepare_prompt
from analysis.scoring import continues_number, greedy_answers, read_number, score_and_read, score_answers, shared_lengths

PROMPT = "1 + 1 = 2. 2 + 2 = 4. 5 + 5 ="


def test_multi_token_answer_is_the_teacher_forced_sum_of_its_token_logprobs():
    model = tiny_model(char_tokenizer(), seed=3)
    prepared = prepare_prompt(model, PROMPT, {"correct": " 10", "misconception": " 6"})
    answer = prepared.answers["correct"].token_ids  # '1', '0'
    scores = score_answers(model, [prepared.tokens], [answer])
    ids, expected = prepared.tokens.tolist(), 0.0
    for token in answer:  # one forward pass per token, by hand
        with torch.no_grad():
            expected += model(torch.tensor([ids])).log_softmax(-1)[0, -1, token].item()
        ids.append(token)
    assert scores.token_logprob.item() == pytest.approx(expected, abs=1e-5)
    with torch.no_grad():
        after = model(torch.tensor([ids])).softmax(-1)[0, -1]
    digits = [model.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    assert scores.boundary_logprob.item() == pytest.approx(torch.log(1 - after[digits].sum()).item(), abs=1e-5)
    assert scores.logprob.item() == pytest.approx(expected + scores.boundary_logprob.item())


def test_batched_scores_equal_one_at_a_time():
    model = tiny_model(char_tokenizer(), seed=1)
    contexts = [model.to_tokens(t)[0] for t in ("5 + 5 =", "1 + 2 = 3. 4 + 4 =", "2 + 2 =")]
    answers = [(3, 2), (10,), (6,)]
    together = score_answers(model, contexts, answers, batch_size=2)
    for i in range(3):
        alone = score_answers(model, [contexts[i]], [answers[i]])
        assert together.logprob[i].item() == pytest.approx(alone.logprob[0].item(), abs=1e-5)


@needs_gpt2_tokenizer
def test_number_continuation_tokens():
    model = tiny_model(gpt2_tokenizer(), d_model=16, n_heads=2, n_layers=1)
    mask = continues_number(model)
    encode = model.tokenizer.convert_tokens_to_ids
    assert mask[encode("0")] and mask[encode("00")]
    assert not mask[encode("Ġ0")] and not mask[encode(".")]  # ' 0' starts a new number


def test_reading_numbers():
    assert read_number(" 10. 3 +") == 10
    assert read_number("6") == 6 and read_number(" the") is None and read_number("") is None


def test_greedy_answer_is_the_argmax_path():
    model = tiny_model(char_tokenizer(), seed=2)
    context = model.to_tokens("5 + 5 =")[0]
    numbers, texts = greedy_answers(model, [context, context], max_tokens=3)
    ids = context.tolist()
    for _ in range(3):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert texts[0] == texts[1] == model.tokenizer.decode(ids[len(context):])
    assert numbers[0] == read_number(texts[0])


@pytest.mark.parametrize("build", [lambda: tiny_model(char_tokenizer(), n_layers=2, seed=1), lambda: rotary_model(seed=1)],
                         ids=["absolute", "rotary"])
def test_contexts_sharing_a_prefix_score_as_when_each_runs_whole(build):
    model = build()
    generator = torch.Generator().manual_seed(0)
    prefixes = [torch.randint(1, model.cfg.d_vocab, (7,), generator=generator) for _ in range(3)]
    contexts = [torch.cat([prefix, torch.randint(1, model.cfg.d_vocab, (3,), generator=generator)])
                for prefix in prefixes for _ in range(4)]
    contexts.append(prefixes[0][:5].clone())  # a shorter one in group 0: it shares all but its last token
    groups = [i // 4 for i in range(12)] + [0]
    shared = shared_lengths(contexts, groups)
    assert shared == [5] * 4 + [7] * 8 + [4]  # group 0 shares only what its shorter member has
    answers = [tuple(torch.randint(1, model.cfg.d_vocab, (2,), generator=generator).tolist()) for _ in contexts]
    whole, _, whole_texts = score_and_read(model, contexts, answers, max_tokens=3)
    split, _, split_texts = score_and_read(model, contexts, answers, max_tokens=3, shared=shared)
    assert torch.allclose(split.token_logprob, whole.token_logprob, atol=1e-5)
    assert torch.allclose(split.boundary_logprob, whole.boundary_logprob, atol=1e-5)
    assert split_texts == whole_texts
