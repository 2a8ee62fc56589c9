"""Few-shot addition prompts, "a + b = c. ... x + y =", as data: no tokenizer, no torch.

`params.py` checks prompts with `parse_arithmetic` before any model loads, so this module
imports nothing heavy.
"""

from __future__ import annotations

import random
import re
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


