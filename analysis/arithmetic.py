"""Few-shot addition prompts, "a + b = c. ... x + y =", as data: no tokenizer, no torch.

`params.py` checks prompts with `parse_arithmetic` before any model loads, so this module
imports nothing heavy.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

STYLES = ((" + ", " = "), ("+", "="))  # spaced (the study's) and unspaced


@dataclass(frozen=True)
class ArithmeticPrompt:
    """Few-shot addition: solved examples, then the query, in one spacing style."""

    shots: tuple[tuple[int, int], ...]
    query: tuple[int, int]
    plus: str = " + "
    equals: str = " = "

    def _solved(self, a: int, b: int) -> str:
        return f"{a}{self.plus}{b}{self.equals}{a + b}."

    @property
    def text(self) -> str:
        x, y = self.query
        return " ".join([*(self._solved(a, b) for a, b in self.shots), f"{x}{self.plus}{y}{self.equals.rstrip()}"])

    @property
    def answer(self) -> int:
        return sum(self.query)

    @property
    def answer_prefix(self) -> str:
        """What comes between '=' and the number: ' ' in the spaced style."""
        return self.equals[len(self.equals.rstrip()):]

    def answer_text(self, number: int) -> str:
        return f"{self.answer_prefix}{number}"

    @property
    def shot_answers(self) -> tuple[int, ...]:
        return tuple(a + b for a, b in self.shots)

    def shot_answer_spans(self) -> list[tuple[int, int]]:
        """Character span of each example's answer in `text`."""
        spans, offset = [], 0
        for a, b in self.shots:
            start = offset + len(f"{a}{self.plus}{b}{self.equals}")
            spans.append((start, start + len(str(a + b))))
            offset += len(self._solved(a, b)) + 1
        return spans

    def query_operand_spans(self) -> list[tuple[int, int]]:
        x, y = (str(v) for v in self.query)
        start = len(self.text) - len(f"{x}{self.plus}{y}{self.equals.rstrip()}")
        second = start + len(x) + len(self.plus)
        return [(start, start + len(x)), (second, second + len(y))]


def parse_arithmetic(text: str) -> ArithmeticPrompt:
    """The inverse of ArithmeticPrompt.text, in either style; ValueError otherwise."""
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    if len(numbers) < 2 or len(numbers) % 3 != 2:
        raise ValueError(f"{text!r} is not of the form 'a + b = c. ... x + y ='")
    shots = tuple((numbers[i], numbers[i + 1]) for i in range(0, len(numbers) - 2, 3))
    for i, (a, b) in enumerate(shots):
        if a + b != numbers[3 * i + 2]:
            raise ValueError(f"{text!r}: the example {a} + {b} = {numbers[3 * i + 2]} is wrong")
    for plus, equals in STYLES:
        prompt = ArithmeticPrompt(shots, (numbers[-2], numbers[-1]), plus, equals)
        if prompt.text == text:
            return prompt
    raise ValueError(f"{text!r} is not of the form 'a + b = c. ... x + y =' (or 'a+b=c. ... x+y=')")


def count_few_shot_prompts(n_shots: int, max_operand: int) -> int:
    """How many distinct prompts few_shot_family can draw: every query, times every choice of
    examples whose answers begin with another digit than the query's answer."""
    pairs = (max_operand + 1) ** 2
    by_digit = Counter(str(a + b)[0] for a in range(max_operand + 1) for b in range(max_operand + 1))
    return sum(n * (pairs - n) ** n_shots for n in by_digit.values())


def few_shot_family(n_prompts: int, n_shots: int, max_operand: int, seed: int) -> list[ArithmeticPrompt]:
    """Seeded few-shot prompts with operands in 0..max_operand, distinct from one another.

    The query's answer begins with a different digit from every example's answer, so that
    copying an earlier answer and answering correctly lead to different first tokens, on
    any tokenizer.
    """
    rng = random.Random(seed)
    prompts: list[ArithmeticPrompt] = []
    seen = set()
    while len(prompts) < n_prompts:
        shots = tuple((rng.randint(0, max_operand), rng.randint(0, max_operand)) for _ in range(n_shots))
        query = (rng.randint(0, max_operand), rng.randint(0, max_operand))
        prompt = ArithmeticPrompt(shots, query)
        if prompt.text in seen or any(str(s)[0] == str(prompt.answer)[0] for s in prompt.shot_answers):
            continue
        seen.add(prompt.text)
        prompts.append(prompt)
    return prompts




def all_pairs(max_operand: int) -> list[tuple[int, int]]:
    """Every query a + b with operands in 0..max_operand, a-major."""
    return [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]


def few_shot_contexts(n_contexts: int, n_shots: int, max_operand: int, seed: int) -> list[tuple[tuple[int, int], ...]]:
    """Seeded random examples: the few-shot contexts of the behaviour stage."""
    rng = random.Random(seed)
    return [tuple((rng.randint(0, max_operand), rng.randint(0, max_operand)) for _ in range(n_shots))
            for _ in range(n_contexts)]


# --- error sets: prompt pairs that differ only where a hypothesis says ---------------------

@dataclass(frozen=True)
class PromptPair:
    """A context that should induce the error (`corrupt`) and a matched one that should not
    (`clean`): the same query, examples whose numbers have the same digit counts, so that
    both tokenize to the same length. `error` is the wrong answer the hypothesis predicts."""

    corrupt: ArithmeticPrompt
    clean: ArithmeticPrompt
    error: int

    @property
    def correct(self) -> int:
        return self.corrupt.answer


def _first(n: int) -> str:
    return str(n)[0]


def _shot_with_sum(rng: random.Random, total: int, max_operand: int) -> tuple[int, int] | None:
    choices = [(a, total - a) for a in range(max_operand + 1) if 0 <= total - a <= max_operand]
    return rng.choice(choices) if choices else None


def _matched_shot(rng: random.Random, shot: tuple[int, int] | None, max_operand: int,
                  avoid: set[str]) -> tuple[int, int] | None:
    """An example whose sum starts with none of the digits in `avoid` and, given `shot`,
    whose operands and sum have the digit counts of `shot`'s (None if there is none)."""
    digits = [len(str(v)) for v in (*shot, sum(shot))] if shot else None
    candidates = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)
                  if _first(a + b) not in avoid and (not digits or [len(str(a)), len(str(b)), len(str(a + b))] == digits)]
    return rng.choice(candidates) if candidates else None


def _distinct_pairs(make, n: int, seed: int, max_tries: int = 100_000) -> list[PromptPair]:
    rng, pairs, seen = random.Random(seed), [], set()
    for _ in range(max_tries):
        pair = make(rng)
        if pair is not None and pair.corrupt.text not in seen:
            seen.add(pair.corrupt.text)
            pairs.append(pair)
            if len(pairs) == n:
                return pairs
    raise ValueError(f"only {len(pairs)} distinct prompt pairs of this kind exist; fewer than the {n} asked for")


def copy_pairs(n: int, n_shots: int, max_operand: int, seed: int) -> list[PromptPair]:
    """Copy: every example answers the candidate error W (as in `0 + 7 = 7. 4 + 3 = 7.`);
    the clean context's examples answer other numbers (same digit counts), none starting
    like W or the correct answer."""
    def make(rng: random.Random) -> PromptPair | None:
        query = (rng.randint(0, max_operand), rng.randint(0, max_operand))
        correct = sum(query)
        error = rng.randint(0, 2 * max_operand)
        shots = [_shot_with_sum(rng, error, max_operand) for _ in range(n_shots)]
        if None in shots or _first(error) == _first(correct):
            return None
        avoid = {_first(correct), _first(error)}
        clean = [_matched_shot(rng, s, max_operand, avoid) for s in shots]
        if None in clean:
            return None
        return PromptPair(ArithmeticPrompt(tuple(shots), query), ArithmeticPrompt(tuple(clean), query), error)

    return _distinct_pairs(make, n, seed)


def sequence_pairs(n: int, max_operand: int, seed: int) -> list[PromptPair]:
    """Sequence: two examples whose answers s1, s2 step by d != 0, so that the next term is
    s2 + d; the next term, both examples' answers and the correct answer start with four
    different digits, so sequence completion and copying lead to different first tokens.
    The clean context's answers (same digit counts) form no step towards the next term."""
    def make(rng: random.Random) -> PromptPair | None:
        query = (rng.randint(0, max_operand), rng.randint(0, max_operand))
        s1, s2 = rng.randint(0, 2 * max_operand), rng.randint(0, 2 * max_operand)
        nxt = 2 * s2 - s1
        shots = [_shot_with_sum(rng, s, max_operand) for s in (s1, s2)]
        firsts = {_first(v) for v in (s1, s2, nxt, sum(query))}
        if s1 == s2 or not 0 <= nxt <= 2 * max_operand or None in shots or len(firsts) < 4:
            return None
        avoid = {_first(sum(query)), _first(nxt)}
        clean = tuple(_matched_shot(rng, s, max_operand, avoid) for s in shots)
        if None in clean or 2 * sum(clean[1]) - sum(clean[0]) == nxt:
            return None
        return PromptPair(ArithmeticPrompt(tuple(shots), query), ArithmeticPrompt(clean, query), nxt)

    return _distinct_pairs(make, n, seed)


# --- error sets that separate hypotheses ---------------------------------------------------

def _shot_avoiding(rng: random.Random, total: int, max_operand: int, avoid: int) -> tuple[int, int] | None:
    """An example answering `total` whose operands are not `avoid` (so that the number
    occurs in the context only where the set puts it)."""
    choices = [(a, total - a) for a in range(max_operand + 1)
               if 0 <= total - a <= max_operand and avoid not in (a, total - a)]
    return rng.choice(choices) if choices else None


def _clean_shot(rng: random.Random, shot: tuple[int, int], max_operand: int, avoid_first: set[str],
                avoid: int, allowed=lambda a, b: True) -> tuple[int, int] | None:
    """A clean example matching `shot`'s digit counts, whose sum starts with none of
    `avoid_first` and in which the number `avoid` occurs nowhere."""
    digits = [len(str(v)) for v in (*shot, sum(shot))]
    candidates = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)
                  if _first(a + b) not in avoid_first and avoid not in (a, b, a + b) and allowed(a, b)
                  and [len(str(a)), len(str(b)), len(str(a + b))] == digits]
    return rng.choice(candidates) if candidates else None


def placed_pairs(n: int, n_shots: int, where: tuple[int, ...], max_operand: int, seed: int) -> list[PromptPair]:
    """The error W occurs in the corrupt context exactly as the answer of the examples at
    positions `where` (0 is the first; n_shots - 1 the previous answer), nowhere else: no
    other example answers it, no operand is W, and the query is neither W's operand nor
    answered by it. The clean context's examples (same digit counts) contain W nowhere.
    So `where=(last,)` is a copy of the previous answer at frequency one, `where=(0,)` an
    earlier answer at frequency one, and every position a repeat (frequency n_shots)."""
    def make(rng: random.Random) -> PromptPair | None:
        query = (rng.randint(0, max_operand), rng.randint(0, max_operand))
        correct, error = sum(query), rng.randint(0, 2 * max_operand)
        if _first(error) == _first(correct) or error in query:
            return None
        avoid_first = {_first(correct), _first(error)}
        shots: list[tuple[int, int] | None] = []
        for i in range(n_shots):
            if i in where:
                shots.append(_shot_avoiding(rng, error, max_operand, error))
            else:
                shots.append(_clean_shot(rng, (rng.randint(0, max_operand), rng.randint(0, max_operand)), max_operand,
                                         avoid_first, error))
        if None in shots:
            return None
        clean = [_clean_shot(rng, shot, max_operand, avoid_first, error) for shot in shots]
        if None in clean:
            return None
        return PromptPair(ArithmeticPrompt(tuple(shots), query), ArithmeticPrompt(tuple(clean), query), error)

    return _distinct_pairs(make, n, seed)


def plus_one_pairs(n: int, n_shots: int, max_operand: int, seed: int) -> list[PromptPair]:
    """The b + 1 error (5 + 5 = 6 is 'the last operand plus one'): every corrupt example is
    a true sum of the form 1 + b = b + 1, so that 'answer the last operand plus one' fits
    the context; the query x + y (x != 1) then invites W = y + 1. The clean examples (same
    digit counts) have a first operand other than 1. W occurs in neither context, and no
    example's answer starts like W or the correct answer."""
    def make(rng: random.Random) -> PromptPair | None:
        query = (rng.randint(0, max_operand), rng.randint(0, max_operand))
        correct, error = sum(query), query[1] + 1
        if query[0] == 1 or _first(error) == _first(correct):
            return None
        avoid_first = {_first(correct), _first(error)}
        shots = []
        for _ in range(n_shots):
            b = rng.randint(0, max_operand)
            if _first(b + 1) in avoid_first or error in (1, b, b + 1):
                return None
            shots.append((1, b))
        clean = [_clean_shot(rng, shot, max_operand, avoid_first, error, allowed=lambda a, b: a != 1) for shot in shots]
        if None in clean:
            return None
        return PromptPair(ArithmeticPrompt(tuple(shots), query), ArithmeticPrompt(tuple(clean), query), error)

    return _distinct_pairs(make, n, seed)


def _digit_counts(shots: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    return tuple(len(str(v)) for a, b in shots for v in (a, b, a + b))


def natural_pairs(contexts: list[tuple[tuple[int, int], ...]], answers: list[list[int | None]], max_operand: int,
                  error_of, seed: int) -> list[PromptPair]:
    """Errors the model makes unprompted: for every context and query (answers[context]
    [query], queries in all_pairs order) whose answer is error_of(query) and wrong, a pair
    of that context (corrupt) and another context, with examples of the same digit counts,
    in which the model answers the same query right (clean), drawn with a seeded shuffle."""
    rng = random.Random(seed)
    queries = all_pairs(max_operand)
    pairs = []
    for i, shots in enumerate(contexts):
        for q, query in enumerate(queries):
            error = error_of(query)
            if answers[i][q] != error or error == sum(query):
                continue
            right = [j for j in range(len(contexts)) if answers[j][q] == sum(query)
                     and _digit_counts(contexts[j]) == _digit_counts(shots)]
            if right:
                clean = contexts[rng.choice(right)]
                pairs.append(PromptPair(ArithmeticPrompt(shots, query), ArithmeticPrompt(clean, query), error))
    return pairs

