"""Prompts and answers, tokenizer-aware.

Answers are strings (" 10", " 6"), and tokenizers split them differently: GPT-2 has the
single tokens " 6" and " 10"; SmolLM2 splits " 10" into " ", "1", "0". Two rules:

1. Whole answers are scored as strings: the sum of the log-probabilities of the answer's
   tokens under teacher forcing, and the probability that the number ends there
   (analysis/scoring.py).
2. Where an analysis needs one token per answer (the logit lens, logit differences), the
   tokens that all candidates share after the prompt are moved into the context, and
   each candidate is represented by its first distinguishing token. For SmolLM2 the
   context then ends in "= " and the candidates are "1" and "6"; for GPT-2 nothing moves
   and the candidates are " 10" and " 6". `PreparedPrompt.context` is the text actually
   fed to the model; the paper reports it.

A first distinguishing token can stand for more than its answer (SmolLM2's "1" also
begins "1", "11", ...), which is why whole-answer scores are reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from analysis.arithmetic import ArithmeticPrompt, few_shot_family, parse_arithmetic

if TYPE_CHECKING:
    from analysis.params import FamilyParams


@dataclass(frozen=True)
class Answer:
    name: str
    text: str
    token_ids: tuple[int, ...]  # the answer's tokens after the shared context
    token_strs: tuple[str, ...]

    @property
    def first_token_id(self) -> int:
        return self.token_ids[0]

    @property
    def first_token(self) -> str:
        return self.token_strs[0]


@dataclass(frozen=True)
class PreparedPrompt:
    prompt: str  # as written in params.yaml
    context: str  # the text fed to the model: the prompt plus the tokens all answers share
    tokens: Int[Tensor, "pos"]  # the context's tokens, BOS first where the model uses one
    str_tokens: tuple[str, ...]
    answers: dict[str, Answer]

    @property
    def first_token_ids(self) -> list[int]:
        return [a.first_token_id for a in self.answers.values()]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def common_prefix(sequences: list[list[int]]) -> list[int]:
    prefix = []
    for column in zip(*sequences, strict=False):
        if any(token != column[0] for token in column):
            break
        prefix.append(column[0])
    return prefix


def prepare_prompt(model, prompt: str, answers: Mapping[str, str]) -> PreparedPrompt:
    """Split prompt + answers into a shared context and each answer's own tokens."""
    tokenizer = model.tokenizer
    full = {name: _encode(tokenizer, prompt + text) for name, text in answers.items()}
    shared = common_prefix(list(full.values()))
    prompt_ids = _encode(tokenizer, prompt)
    if shared[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            f"the answers {list(answers.values())} change how the prompt {prompt!r} itself is tokenized; "
            "end the prompt at a token boundary"
        )
    split = {}
    for name, ids in full.items():
        own = ids[len(shared):]
        if not own:
            raise ValueError(
                f"answer {name} ({answers[name]!r}) has no token of its own after the shared context "
                f"{tokenizer.decode(shared)!r}: another answer begins with all of its tokens"
            )
        split[name] = Answer(name, answers[name], tuple(own), tuple(tokenizer.decode([t]) for t in own))
    context_ids = ([tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []) + shared
    tokens = torch.tensor(context_ids, dtype=torch.long)
    return PreparedPrompt(
        prompt=prompt,
        context=tokenizer.decode(shared),
        tokens=tokens,
        str_tokens=tuple(tokenizer.decode([t]) for t in context_ids),
        answers=split,
    )


def prepare_family(model, family: FamilyParams) -> tuple[list[ArithmeticPrompt], list[PreparedPrompt]]:
    """The seeded prompt family, each prompt prepared with its right answer ("correct") and
    a copy of the previous example's answer ("copy")."""
    prompts = few_shot_family(family.n_prompts, family.n_shots, family.max_operand, family.seed)
    prepared = [prepare_prompt(model, p.text, {"correct": f" {p.answer}", "copy": f" {p.shot_answers[-1]}"})
                for p in prompts]
    return prompts, prepared


def whole_copy(prepared: list[PreparedPrompt]) -> Bool[Tensor, "prompt"]:
    """Prompts on which the copy's first distinguishing token is the whole copy. Where the
    previous answer has more tokens after the context (SmolLM2 writes 12 as " 1", "2"), its
    first token also begins other numbers (" 1" begins 10 to 19), so its probability is not
    that of a copy; analyses of the copy leave those prompts out."""
    return torch.tensor([len(p.answers["copy"].token_ids) == 1 for p in prepared])


def prepare_arithmetic(model, text: str, answers: Mapping[str, str]) -> tuple[ArithmeticPrompt, PreparedPrompt]:
    """An arithmetic prompt in either spacing style, with its (numeric) answers written in
    the same style: " 10" after "5 + 5 =", "10" after "5+5="."""
    prompt = parse_arithmetic(text)
    return prompt, prepare_prompt(model, text, {k: prompt.answer_text(int(v)) for k, v in answers.items()})


def token_positions(model, prepared: PreparedPrompt, spans: list[tuple[int, int]]) -> list[list[int]]:
    """For each character span of the context, the positions of the tokens that overlap it."""
    encoded = model.tokenizer(prepared.context, add_special_tokens=False, return_offsets_mapping=True)
    offset = len(prepared.tokens) - len(encoded["input_ids"])  # BOS, if any
    if encoded["input_ids"] != prepared.tokens[offset:].tolist():
        raise ValueError(f"re-tokenizing {prepared.context!r} does not give the prepared tokens")
    return [[offset + i for i, (s, e) in enumerate(encoded["offset_mapping"]) if s < end and e > start]
            for start, end in spans]


def equal_length_batches(keys: list, batch_size: int | None = None) -> Iterator[list[int]]:
    """Indices of the sequences that share a key (their token count, or a tuple of counts),
    in batches of at most batch_size (default: the whole group), keys in sorted order.
    Each batch runs unpadded."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for key in sorted(groups):
        indices = groups[key]
        size = batch_size or len(indices)
        for start in range(0, len(indices), size):
            yield indices[start : start + size]


def run_by_length(prepared: list[PreparedPrompt],
                  compute: Callable[[Int[Tensor, "batch pos"], list[int]], Tensor | tuple[Tensor, ...]],
                  batch_size: int | None = None) -> Tensor | tuple[Tensor, ...]:
    """compute(tokens, indices) on each batch of equal-length prompts, its rows put back in
    the order of `prepared`. compute returns a tensor, or a tuple of tensors, whose first
    axis is the batch."""
    stacked: list[Tensor] = []
    is_tuple = False
    for chunk in equal_length_batches([len(p.tokens) for p in prepared], batch_size):
        out = compute(torch.stack([prepared[i].tokens for i in chunk]), chunk)
        is_tuple = isinstance(out, tuple)
        parts = out if is_tuple else (out,)
        if not stacked:
            stacked = [torch.empty(len(prepared), *x.shape[1:], dtype=x.dtype) for x in parts]
        for whole, part in zip(stacked, parts, strict=True):
            whole[chunk] = part.cpu()
    return tuple(stacked) if is_tuple else stacked[0]
