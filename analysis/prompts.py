"""Prompts and answers, tokenizer-aware.

Answers are strings (" 10", " 6"), and tokenizers split them differently: GPT-2 has the
single tokens " 6" and " 10"; SmolLM2 splits " 10" into " ", "1", "0". Two rules:

1. Whole answers are scored as strings: the sum of the log-probabilities of the answer's
   tokens under teacher forcing (`answer_logprobs`).
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

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor


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


def _common_prefix(sequences: list[list[int]]) -> list[int]:
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
    shared = _common_prefix(list(full.values()))
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


@torch.no_grad()
def answer_logprobs(model, prepared: PreparedPrompt) -> dict[str, float]:
    """log P(answer | context) for each whole answer: its tokens' log-probs, teacher-forced."""
    scores = {}
    for name, answer in prepared.answers.items():
        ids = torch.cat([prepared.tokens, torch.tensor(answer.token_ids)]).to(model.cfg.device)
        logprobs = model(ids[None]).log_softmax(-1)[0]
        n = len(answer.token_ids)
        start = len(prepared.tokens) - 1  # the logits at position p predict token p + 1
        targets = ids[start + 1 : start + 1 + n]
        scores[name] = logprobs[start : start + n].gather(-1, targets[:, None]).sum().item()
    return scores
