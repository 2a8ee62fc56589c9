"""Behaviour across single-digit addition (the study's Figures 6 and 8).

DVC stage `behaviour@<model>`. Reads params.yaml [seed, models.<model>, prompt, stats,
behaviour]; writes data/<model>/behaviour.safetensors and
data/<model>/behaviour.json. The paper draws its figures from them.

For every pair a + b with a, b in 0..max_operand, in three conditions:
- zero_shot: "a + b =" alone;
- few_shot: after k solved examples, in each of n seeded contexts (the same contexts for
  every pair, so each pair appears exactly once per context);
- study_context: after the canonical prompt's own examples ("1 + 1 = 2. 2 + 2 = 4.").

Few-shot intervals resample contexts only: in each context every query of the grid is
asked, so the grid is the whole population of queries, not a sample of it. Zero-shot and
after the study's examples there is one context, so those rates are exact and carry no
interval. Comparisons on the same queries (with a carry against without, with examples
against without) are paired differences with their own intervals.

Per prompt: the model's answer (greedy decoding, read as a number), whether it is right,
and the error probability 1 - P(exactly the right number) from whole-answer scoring.
Wrong answers are classified, not exclusively: a copy of an answer in the context, the
continuation of the context answers' arithmetic sequence (the study's explanation, "2, 4,
then 6"), an operand, the last operand plus one (5 + 5 = 6), off by one, or none of these.
The most frequent wrong answers are counted, per condition. Each class rate comes with the rate a
uniformly random wrong number in 0..2*max_operand would have.

Inside the chat template (an instruct model's own format): the zero-shot and study-context
queries sent as the user's message through the tokenizer's chat template, the reply
decoded greedily and read as the number after the query's "a + b =" if the reply repeats
it, else after "answer is", else a number it starts with (a reply about something else
has no answer). Paired with the plain prompts' greedy answers on the
same queries (exact McNemar). Models without a chat template (GPT-2) skip it.

Frequency bias: the probability of each number as a whole answer after neutral contexts
that ask for no sum (the model's prior over numbers), against its probability as the
answer to the canonical query zero-shot and few-shot.

    python -m analysis.behaviour --model smollm2-135m
"""

from __future__ import annotations

from dataclasses import dataclass

import re

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis.artifacts import (Level, Name, Prob, Schema, StagePaths, StageResults, load_json, load_tensors,
                                save_json, save_tensors)
from analysis.params import Params
from analysis.arithmetic import ArithmeticPrompt, all_pairs, few_shot_contexts, parse_arithmetic
from analysis.prompts import PreparedPrompt, prepare_prompt
from analysis.scoring import continues_number, greedy_answers, score_and_read, score_answers, shared_lengths
from analysis.stage import run_stage
from analysis.stats import Estimate, context_bootstrap, mcnemar_p_value, proportion

STAGE = "behaviour"
# What `dvc metrics show` lists for this stage (paths into the results, fnmatch patterns).
HEADLINE = ("conditions.*.accuracy.all.*", "conditions.*.error_prob.all.mean", "conditions.*.carry_gap.mean",
            "conditions.*.n_wrong", "conditions.*.items.*.accuracy", "error_vs_zero_shot.*.mean")
CONDITIONS = ("zero_shot", "few_shot", "study_context")
CLASSES = ("copy", "sequence", "operand", "last_operand_plus_one", "off_by_one", "other")
DIGITS = {f"digit_{d}": f" {d}" for d in range(10)}  # fixes where every numeric answer starts


def condition_prompts(contexts: list[tuple[tuple[int, int], ...]], max_operand: int) -> list[list[ArithmeticPrompt]]:
    """prompts[context][pair]: every pair once per context, pairs in all_pairs order."""
    return [[ArithmeticPrompt(shots, pair) for pair in all_pairs(max_operand)] for shots in contexts]


def prepare_query(model, prompt: ArithmeticPrompt) -> PreparedPrompt:
    """The context (prompt plus whatever every number shares) and the right answer's tokens."""
    return prepare_prompt(model, prompt.text, {**DIGITS, "correct": f" {prompt.answer}"})


# --- classifying wrong answers ---------------------------------------------------------

def sequence_next(answers: tuple[int, ...]) -> int | None:
    """The next term of the context answers' arithmetic sequence (2, 4 -> 6), if two or more."""
    if len(answers) < 2:
        return None
    return answers[-1] + (answers[-1] - answers[-2])


def classify(answer: int | None, prompt: ArithmeticPrompt) -> dict[str, bool]:
    """Which explanations fit a wrong answer; several can fit at once."""
    if answer is None:
        labels = dict.fromkeys(CLASSES[:-1], False)
    else:
        labels = {
            "copy": answer in prompt.shot_answers,
            "sequence": answer == sequence_next(prompt.shot_answers),
            "operand": answer in prompt.query,
            "last_operand_plus_one": answer == prompt.query[-1] + 1,  # 5 + 5 = 6
            "off_by_one": abs(answer - prompt.answer) == 1,
        }
    labels["other"] = not any(labels.values())
    return labels


def chance_rates(prompt: ArithmeticPrompt, max_answer: int) -> dict[str, float]:
    """Class rates of a wrong answer drawn uniformly from 0..max_answer (not the right one)."""
    wrong = [n for n in range(max_answer + 1) if n != prompt.answer]
    counts = dict.fromkeys(CLASSES, 0)
    for n in wrong:
        for name, fits in classify(n, prompt).items():
            counts[name] += fits
    return {name: count / len(wrong) for name, count in counts.items()}


# --- compute ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ConditionData:
    prompts: list[list[ArithmeticPrompt]]  # (context, pair)
    answers: Int[Tensor, "context pair"]  # the model's greedy answer, -1 where not a number
    texts: list[list[str]]
    p_correct: Float[Tensor, "context pair"]  # P(exactly the right number)

    @property
    def truth(self) -> Int[Tensor, "context pair"]:
        return torch.tensor([[p.answer for p in row] for row in self.prompts])

    @property
    def correct(self) -> Float[Tensor, "context pair"]:
        """1.0 where the greedy answer is the right number."""
        return (self.answers == self.truth).double()


@torch.no_grad()
def compute_condition(model, prompts: list[list[ArithmeticPrompt]], max_answer_tokens: int,
                      continuing: Tensor) -> ConditionData:
    """Greedy answers and right-answer probabilities of every prompt, batched."""
    flat = [p for row in prompts for p in row]
    prepared = [prepare_query(model, p) for p in flat]
    contexts = [p.tokens for p in prepared]
    shape = (len(prompts), len(prompts[0]))
    shared = shared_lengths(contexts, [i // shape[1] for i in range(len(flat))])  # a context's examples
    scores, numbers, texts = score_and_read(model, contexts, [p.answers["correct"].token_ids for p in prepared],
                                            max_answer_tokens, continuing=continuing, shared=shared)
    answers = torch.tensor([-1 if n is None else n for n in numbers]).reshape(shape)
    grid_texts = [texts[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])]
    return ConditionData(prompts, answers, grid_texts, scores.logprob.exp().reshape(shape))


@torch.no_grad()
def compute_number_probs(model, contexts: list[str], numbers: list[int], continuing: Tensor) -> Float[Tensor, "context number"]:
    """P(exactly the number n) as the continuation of each context, for every n."""
    prepared = [prepare_prompt(model, text, {**DIGITS, **{f"n{n}": f" {n}" for n in numbers}}) for text in contexts]
    flat_contexts = [p.tokens for p in prepared for _ in numbers]
    flat_answers = [p.answers[f"n{n}"].token_ids for p in prepared for n in numbers]
    shared = shared_lengths(flat_contexts, [i // len(numbers) for i in range(len(flat_contexts))])
    scores = score_answers(model, flat_contexts, flat_answers, continuing=continuing, shared=shared)
    return scores.logprob.exp().reshape(len(contexts), len(numbers))


# --- results ---------------------------------------------------------------------------

def read_reply(text: str, query: tuple[int, int]) -> int | None:
    """The number a chat reply gives for a + b: after "a + b =" if the reply repeats the
    query, else after "answer is", else a number the reply starts with; None otherwise
    (a reply about something else, or one that only quotes the examples)."""
    text = text.split("<|im_end|>")[0]
    a, b = query
    found = (re.search(rf"(?<!\d){a}\s*\+\s*{b}\s*=\s*(\d+)", text)
             or re.search(r"answer is:?\s*(\d+)", text, flags=re.IGNORECASE) or re.match(r"\s*(\d+)", text))
    return int(found.group(1)) if found else None


def chat_tokens(model, text: str) -> Int[Tensor, "pos"] | None:
    """The text as the user's message in the tokenizer's chat template, the assistant's turn
    opened; None if the tokenizer has no template."""
    if not getattr(model.tokenizer, "chat_template", None):
        return None
    ids = model.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=True)
    return torch.tensor(list(ids["input_ids"] if hasattr(ids, "keys") else ids), dtype=torch.long)


@torch.no_grad()
def compute_chat(model, prompts: list[ArithmeticPrompt], max_tokens: int) -> tuple[list[int | None], list[str]] | None:
    """Every prompt's greedy reply inside the chat template, read as a number."""
    contexts = [chat_tokens(model, p.text) for p in prompts]
    if contexts[0] is None:
        return None
    _, texts = greedy_answers(model, contexts, max_tokens)
    return [read_reply(t, p.query) for t, p in zip(texts, prompts, strict=True)], texts


class Item(Schema):
    prompt: str
    answers: list[int | None]  # per context
    accuracy: Prob
    p_correct: Prob  # mean over contexts
    error_prob: Estimate  # 1 - P(right number), with its interval over contexts


class ConditionResult(Schema):
    description: str
    n_contexts: int
    n_shots: int
    example_prompt: str
    population: bool  # one context: every query of the grid, so rates are exact (no intervals)
    accuracy: dict[str, Estimate]  # all, carry, no_carry
    carry_gap: Estimate  # accuracy without a carry minus with one, paired by context
    error_prob: dict[str, Estimate]
    n_wrong: int
    n_non_numeric: int
    classes: dict[str, Estimate]  # rate among wrong answers, per class (not exclusive)
    frequent_wrong: list[list[int]]  # [answer, count]: the most frequent wrong numeric answers, at most five
    chance: dict[str, Prob]  # the same rates for uniformly random wrong answers
    items: dict[str, Item]  # the study's examples: "5 + 5", "9 + 9"


class FrequencyResult(Schema):
    numbers: list[int]
    neutral_contexts: list[str]
    prior: list[Prob]  # mean over neutral contexts of P(number)
    prior_by_context: list[list[Prob]]
    zero_shot: list[Prob]  # P(number) after the control prompt
    few_shot: list[Prob]  # P(number) after the canonical prompt
    zero_shot_prompt: str
    few_shot_prompt: str
    misconception: int
    correct: int


class ChatCondition(Schema):
    correct: Estimate  # greedy reply read as the right number, exact interval over the queries
    plain_correct: Estimate  # the same queries without the template (the condition's own answers)
    became_correct: int  # queries right in the template and wrong without it
    became_wrong: int
    p_mcnemar: float
    n_unreadable: int  # replies with no number
    frequent_wrong: list[list[int]]
    study_reply: str  # the reply to the study's query (5 + 5), as decoded


class ChatResult(Schema):
    example: str  # the study's prompt as the model saw it inside the template
    max_tokens: int
    conditions: dict[str, ChatCondition]  # zero_shot, study_context


class BehaviourMetrics(StageResults):
    model: Name
    ci_level: Level
    max_operand: int
    n_pairs: int
    conditions: dict[str, ConditionResult]
    # error probability with examples minus without, on the same queries (paired)
    error_vs_zero_shot: dict[str, Estimate]  # few_shot, study_context
    frequency: FrequencyResult
    chat: ChatResult | None  # None: the model has no chat template


def _estimate(values: Tensor, mask: Tensor | None, params: Params, minus: Tensor | None = None,
              minus_mask: Tensor | None = None) -> Estimate:
    return context_bootstrap(values, mask, params.stats.bootstrap_resamples, params.seed, params.stats.ci_level,
                             minus, minus_mask)


def frequent_wrong(answers: Int[Tensor, "context pair"], wrong: Bool[Tensor, "context pair"], top: int = 5
                   ) -> list[list[int]]:
    """The most frequent wrong numeric answers with their counts (ties: the smaller number first)."""
    values, counts = answers[wrong & (answers >= 0)].unique(return_counts=True)
    order = sorted(zip(counts.tolist(), values.tolist(), strict=True), key=lambda cv: (-cv[0], cv[1]))[:top]
    return [[value, count] for count, value in order]


def summarize_condition(data: ConditionData, description: str, params: Params) -> ConditionResult:
    prompts, correct = data.prompts, data.correct
    carry = data.truth >= 10
    splits = {"all": None, "carry": carry, "no_carry": ~carry}
    wrong = correct == 0
    labels = {name: torch.zeros(correct.shape, dtype=torch.double) for name in CLASSES}
    chance = dict.fromkeys(CLASSES, 0.0)
    max_answer = 2 * params.behaviour.max_operand
    for c, row in enumerate(prompts):
        for i, prompt in enumerate(row):
            if wrong[c, i]:
                answer = int(data.answers[c, i])
                for name, fits in classify(None if answer < 0 else answer, prompt).items():
                    labels[name][c, i] = float(fits)
                for name, rate in chance_rates(prompt, max_answer).items():
                    chance[name] += rate
    n_wrong = int(wrong.sum())
    items = {}
    for a, b in ((5, 5), (9, 9)):
        if max(a, b) <= params.behaviour.max_operand:
            index = all_pairs(params.behaviour.max_operand).index((a, b))
            column = data.answers[:, index].tolist()
            items[f"{a} + {b}"] = Item(prompt=prompts[0][index].text, answers=[None if x < 0 else x for x in column],
                                       accuracy=correct[:, index].mean().item(),
                                       p_correct=data.p_correct[:, index].mean().item(),
                                       error_prob=_estimate(1 - data.p_correct[:, index, None].double(), None, params))
    return ConditionResult(
        description=description,
        n_contexts=len(prompts), n_shots=len(prompts[0][0].shots), example_prompt=prompts[0][0].text,
        population=len(prompts) == 1,
        accuracy={k: _estimate(correct, m, params) for k, m in splits.items()},
        carry_gap=_estimate(correct, ~carry, params, correct, carry),
        error_prob={k: _estimate(1 - data.p_correct.double(), m, params) for k, m in splits.items()},
        n_wrong=n_wrong, n_non_numeric=int(((data.answers < 0) & wrong).sum()),
        frequent_wrong=frequent_wrong(data.answers, wrong),
        classes={name: _estimate(values, wrong, params) for name, values in labels.items()},
        chance={name: total / max(n_wrong, 1) for name, total in chance.items()},
        items=items,
    )


def summarize_chat(replies: list[int | None], texts: list[str], prompts: list[ArithmeticPrompt],
                   plain: Tensor, level: float) -> ChatCondition:
    """Right-answer rates in the template and without it on the same queries (paired)."""
    truth = torch.tensor([p.answer for p in prompts])
    answers = torch.tensor([-1 if r is None else r for r in replies])
    chat, plain = answers == truth, plain.bool()
    study = [i for i, p in enumerate(prompts) if p.query == (5, 5)]
    became, ceased = int((chat & ~plain).sum()), int((~chat & plain).sum())
    return ChatCondition(correct=proportion(int(chat.sum()), len(chat), level),
                         plain_correct=proportion(int(plain.sum()), len(plain), level),
                         became_correct=became, became_wrong=ceased, p_mcnemar=mcnemar_p_value(became, ceased),
                         n_unreadable=int((answers < 0).sum()), frequent_wrong=frequent_wrong(answers[None], ~chat[None]),
                         study_reply=texts[study[0]].split("<|im_end|>")[0] if study else "")


def run_chat(model, params: Params, prompts: dict[str, list[ArithmeticPrompt]], plain: dict[str, Tensor],
             tensors: dict[str, Tensor]) -> ChatResult | None:
    max_tokens = params.behaviour.chat_max_tokens
    conditions = {}
    for name, queries in prompts.items():
        read = compute_chat(model, queries, max_tokens)
        if read is None:
            return None
        conditions[name] = summarize_chat(*read, queries, plain[name], params.stats.ci_level)
        tensors[f"chat/{name}/answers"] = torch.tensor([-1 if r is None else r for r in read[0]])
    canonical = model.tokenizer.decode(chat_tokens(model, params.prompt.canonical).tolist())
    return ChatResult(example=canonical, max_tokens=max_tokens, conditions=conditions)


def run(model, params: Params, key: str, paths: StagePaths) -> BehaviourMetrics:
    settings = params.behaviour
    continuing = continues_number(model)
    canonical = parse_arithmetic(params.prompt.canonical)
    contexts = {
        "zero_shot": [()],
        "few_shot": few_shot_contexts(settings.n_contexts, settings.n_shots, settings.max_operand, settings.context_seed),
        "study_context": [canonical.shots],
    }
    descriptions = {
        "zero_shot": "the query alone",
        "few_shot": f"{settings.n_shots} random solved examples, {settings.n_contexts} seeded contexts",
        "study_context": "the canonical prompt's examples",
    }
    results, tensors, error, single, plain = {}, {}, {}, {}, {}
    for name in CONDITIONS:
        prompts = condition_prompts(contexts[name], settings.max_operand)
        data = compute_condition(model, prompts, settings.max_answer_tokens, continuing)
        if len(prompts) == 1:
            single[name], plain[name] = prompts[0], data.correct[0]
        results[name] = summarize_condition(data, descriptions[name], params)
        error[name] = 1 - data.p_correct.double()
        size = settings.max_operand + 1
        tensors[f"{name}/answers"] = data.answers
        tensors[f"{name}/p_correct"] = data.p_correct
        tensors[f"{name}/accuracy_grid"] = data.correct.mean(0).reshape(size, size)
        tensors[f"{name}/error_prob_grid"] = (1 - data.p_correct.double()).mean(0).reshape(size, size)

    numbers = list(range(2 * settings.max_operand + 1))
    prior = compute_number_probs(model, settings.neutral_contexts, numbers, continuing)
    on_prompts = compute_number_probs(model, [params.prompt.control, params.prompt.canonical], numbers, continuing)
    answers = params.prompt.answers
    frequency = FrequencyResult(
        numbers=numbers, neutral_contexts=list(settings.neutral_contexts),
        prior=prior.mean(0).tolist(), prior_by_context=prior.tolist(),
        zero_shot=on_prompts[0].tolist(), few_shot=on_prompts[1].tolist(),
        zero_shot_prompt=params.prompt.control, few_shot_prompt=params.prompt.canonical,
        misconception=int(answers.misconception), correct=int(answers.correct),
    )
    tensors["frequency/prior_by_context"] = prior
    tensors["frequency/on_prompts"] = on_prompts
    chat = run_chat(model, params, single, plain, tensors)
    paired = {name: _estimate(error[name], None, params, error["zero_shot"].expand_as(error[name]))
              for name in ("few_shot", "study_context")}
    metrics = BehaviourMetrics(model=key, ci_level=params.stats.ci_level, max_operand=settings.max_operand,
                               n_pairs=(settings.max_operand + 1) ** 2, conditions=results,
                               error_vs_zero_shot=paired, frequency=frequency, chat=chat)
    save_tensors(paths.tensors, tensors)
    save_json(paths.results, metrics)
    return metrics


def load_results(paths: StagePaths) -> tuple[BehaviourMetrics, dict[str, Tensor]]:
    metrics = load_json(paths.results, BehaviourMetrics)
    size = metrics.max_operand + 1
    expected = {f"{name}/accuracy_grid": (size, size) for name in metrics.conditions}
    return metrics, load_tensors(paths.tensors, expected)


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv)


if __name__ == "__main__":
    main()
