"""Scoring and reading the model's numeric answers, batched.

- `score_answers`: log P(answer | context) for whole answer strings, teacher-forced: the
  sum of the answer tokens' log-probabilities, plus the log-probability that the next
  token does not continue the number (so " 1" is not credited with " 10", nor " 10" with
  " 100"). The two parts are kept apart.
- `greedy_answers`: the model's own answer: greedy decoding of a few tokens, read as the
  leading run of digits.

Prompts of equal length run together (no padding), in chunks of `batch_size`; each
context is run once, and answers and greedy tokens extend its key-value cache. Contexts
that share leading tokens (a few-shot context's examples) can run those once per batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis.prompts import common_prefix, equal_length_batches, run_by_length
from analysis.timing import progress


@dataclass(frozen=True)
class AnswerScores:
    token_logprob: Float[Tensor, "n"]  # sum of the answer tokens' log-probabilities
    boundary_logprob: Float[Tensor, "n"]  # log P(next token does not continue the number)
    first_logprob: Float[Tensor, "n"]  # the answer's first token alone, right after the context

    @property
    def logprob(self) -> Float[Tensor, "n"]:
        return self.token_logprob + self.boundary_logprob


def continues_number(model) -> Bool[Tensor, "vocab"]:
    """Tokens that would extend a number written just before them: they start with a digit."""
    decoded = model.tokenizer.batch_decode([[i] for i in range(model.cfg.d_vocab)])
    return torch.tensor([bool(text) and text[0].isdigit() for text in decoded])


@torch.no_grad()
def final_logits(model, tokens: Int[Tensor, "batch pos"], hooks: list | None = None) -> Float[Tensor, "batch vocab"]:
    """Logits at the last position only (unembedding every position costs more than the
    blocks on short prompts), with optional forward hooks."""
    resid = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks or [], stop_at_layer=model.cfg.n_layers)
    return model.unembed(model.ln_final(resid[:, -1:]))[:, 0]


@torch.no_grad()
def first_token_probs(model, prepared: list, names: tuple[str, ...], hooks: list | None = None
                      ) -> Float[Tensor, "prompt name"]:
    """P(each named answer's first distinguishing token) at the end of each prepared prompt,
    with optional forward hooks; equal-length prompts run as one batch."""
    def probs(tokens: Tensor, indices: list[int]) -> Tensor:
        ids = torch.tensor([[prepared[i].answers[n].first_token_id for n in names] for i in indices])
        return final_logits(model, tokens, hooks).softmax(-1).cpu().gather(-1, ids)

    return run_by_length(prepared, probs, batch_size=64)


@torch.no_grad()
def prefix_kv(model, tokens: Int[Tensor, "batch pos"], keep: int):
    """Every layer's keys and values for all but the last `keep` positions of `tokens`,
    frozen. Attention is causal, so a change made only at the last positions never reaches
    the earlier ones: running just those positions on top of this cache gives what the
    whole run gives there, at a fraction of the cost."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(tokens))
    prefix = tokens[:, :-keep].to(model.cfg.device)
    # no padding anywhere: say so, or pad ids (often BOS) would be guessed and masked
    model(prefix, past_kv_cache=cache, attention_mask=torch.ones_like(prefix), return_type=None)
    cache.freeze()
    return cache


def stack_kv(caches: list, frozen: bool = True):
    """prefix_kv caches of equal length, one after another along the batch; frozen, or
    ready to take more positions."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry

    entries = [TransformerLensKeyValueCacheEntry(torch.cat([c.entries[l].past_keys for c in caches]),
                                                 torch.cat([c.entries[l].past_values for c in caches]), frozen=frozen)
               for l in range(len(caches[0].entries))]
    return TransformerLensKeyValueCache(entries, torch.cat([c.previous_attention_mask for c in caches]), frozen=frozen)


def _forward(model, tokens: Tensor, cache) -> Float[Tensor, "batch pos vocab"]:
    """Log-probabilities for `tokens`, continuing the sequences held in the KV cache."""
    ones = torch.ones_like(tokens)  # no padding anywhere; say so rather than let pad ids be guessed
    resid = model(tokens, stop_at_layer=model.cfg.n_layers, past_kv_cache=cache, attention_mask=ones)
    return model.unembed(model.ln_final(resid)).log_softmax(-1)


def shared_lengths(contexts: list[Int[Tensor, "_pos"]], groups: list[int]) -> list[int]:
    """For each context, how many leading tokens it shares with every context of its group
    (at most all but its last): few-shot queries share their examples, and those positions
    need running once per group, not once per query."""
    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    shared = [0] * len(contexts)
    for indices in members.values():
        rows = [contexts[i].tolist() for i in indices]
        common = len(common_prefix(rows))
        for i in indices:
            shared[i] = min(common, len(contexts[i]) - 1)
    return shared


def _context_pass(model, batch: Int[Tensor, "batch pos"], shared: int):
    """The final residual stream of each context, and the KV cache of all its positions
    (frozen). The first `shared` positions, the same in every row, run once (batch 1)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    if shared >= 2 and len(batch) > 1:
        cache = stack_kv([prefix_kv(model, batch[:1], batch.shape[1] - shared)] * len(batch), frozen=False)
        batch = batch[:, shared:]
    else:
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(batch))
    ones = torch.ones_like(batch)  # no padding anywhere; say so rather than let pad ids be guessed
    resid = model(batch, stop_at_layer=model.cfg.n_layers, past_kv_cache=cache, attention_mask=ones)
    cache.freeze()
    return resid[:, -1:], cache


@torch.no_grad()
def _run(model, contexts: list[Tensor], answers: list[tuple[int, ...]] | None, max_tokens: int,
         batch_size: int, continuing: Tensor, shared: list[int] | None = None
         ) -> tuple[AnswerScores | None, list[str]]:
    """One pass over each context (KV-cached), then the answers and greedy tokens on top of it.

    Contexts run together when they have the same length, answer length and shared prefix
    (`shared[i]` leading tokens, see shared_lengths), the prefix once per batch. Only the
    final position of the context is unembedded; the cache is frozen after the context, so
    the teacher-forced answer and the greedy continuation both extend it.
    """
    n = len(contexts)
    shared = shared or [0] * n
    token_lp, boundary_lp, first_lp, texts = torch.zeros(n), torch.zeros(n), torch.zeros(n), [""] * n
    keys = [(len(c), len(answers[i]) if answers else 0, tuple(c[: shared[i]].tolist())) for i, c in enumerate(contexts)]
    device = model.cfg.device
    chunks = list(equal_length_batches(keys, batch_size))
    for chunk in progress(chunks, "scoring prompts"):
        batch = torch.stack([contexts[i] for i in chunk]).to(device)
        last, cache = _context_pass(model, batch, shared[chunk[0]])
        first = model.unembed(model.ln_final(last)).log_softmax(-1)[:, 0]  # (batch, vocab)
        if answers:
            answer = torch.tensor([answers[i] for i in chunk], device=device)  # (batch, n_answer)
            later = _forward(model, answer, cache)  # position j predicts answer token j + 1
            steps = torch.cat([first[:, None], later], dim=1)  # (batch, n_answer + 1, vocab)
            picked = steps[:, :-1].gather(-1, answer[..., None])[..., 0]
            token_lp[chunk] = picked.sum(-1).cpu()
            first_lp[chunk] = picked[:, 0].cpu()
            ends = steps[:, -1][:, continuing.to(device)].exp().sum(-1).clamp(max=1 - 1e-12)
            boundary_lp[chunk] = torch.log1p(-ends).cpu()
        if max_tokens:
            generated = first.argmax(-1)[:, None]
            while generated.shape[1] < max_tokens:
                step = _forward(model, generated, cache)[:, -1].argmax(-1)
                generated = torch.cat([generated, step[:, None]], dim=1)
            for row, i in enumerate(chunk):
                texts[i] = model.tokenizer.decode(generated[row].tolist())
    return (AnswerScores(token_lp, boundary_lp, first_lp) if answers else None), texts


def score_answers(model, contexts: list[Int[Tensor, "_pos"]], answers: list[tuple[int, ...]],
                  batch_size: int = 64, continuing: Tensor | None = None, shared: list[int] | None = None
                  ) -> AnswerScores:
    """Teacher-forced log-probability of each answer after its context (see module doc)."""
    continuing = continues_number(model) if continuing is None else continuing
    scores, _ = _run(model, contexts, answers, 0, batch_size, continuing, shared)
    return scores


def greedy_answers(model, contexts: list[Int[Tensor, "_pos"]], max_tokens: int = 3,
                   batch_size: int = 64) -> tuple[list[int | None], list[str]]:
    """The model's answer to each context: greedy tokens read as a number (None if none)."""
    _, texts = _run(model, contexts, None, max_tokens, batch_size, torch.zeros(0, dtype=torch.bool))
    return [read_number(t) for t in texts], texts


def score_and_read(model, contexts: list[Int[Tensor, "_pos"]], answers: list[tuple[int, ...]], max_tokens: int,
                   batch_size: int = 64, continuing: Tensor | None = None, shared: list[int] | None = None
                   ) -> tuple[AnswerScores, list[int | None], list[str]]:
    """Both of the above from one pass over each context."""
    continuing = continues_number(model) if continuing is None else continuing
    scores, texts = _run(model, contexts, answers, max_tokens, batch_size, continuing, shared)
    return scores, [read_number(t) for t in texts], texts


@torch.no_grad()
def greedy_under_hooks(model, tokens: Int[Tensor, "batch pos"], hooks: list, max_tokens: int = 3) -> list[str]:
    """The greedy continuations of equal-length contexts (decoded text), with forward
    `hooks` on the context's positions; the answer's own tokens run without them, on the
    context's (hooked) keys and values."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    tokens = tokens.to(model.cfg.device)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(tokens))
    with model.hooks(fwd_hooks=hooks):
        resid = model(tokens, stop_at_layer=model.cfg.n_layers, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))
    generated = model.unembed(model.ln_final(resid[:, -1:]))[:, 0].argmax(-1)[:, None]
    cache.freeze()
    while generated.shape[1] < max_tokens:
        step = _forward(model, generated, cache)[:, -1].argmax(-1)
        generated = torch.cat([generated, step[:, None]], dim=1)
    return [model.tokenizer.decode(row.tolist()) for row in generated]


def read_number(text: str) -> int | None:
    """The leading number of a continuation (' 10. 3 +' -> 10), or None."""
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None
