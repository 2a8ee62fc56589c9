"""Attention over a frozen prefix shared by many copies of a batch, for the causal library's
tail runs (analysis/causal.py): not a stage; it reads and writes nothing.

An ablation's random control runs the same batch's tails (the final context position and
the answer tokens) once per random draw, on the frozen keys and values of the context
before them. TransformerLens attends over a past_kv_cache by concatenating it with the new
keys: with the draws as copies along the batch, every layer copies the whole prefix once
per draw and row, rotates all of it again, and repeats it for every query head, so that
copying the prefix, not the model's arithmetic, took most of a draw's time (README, Speed).

Within `shared_prefix(...)`, each attention layer from `start` on computes the same thing
(keys rotated to their positions, causal mask, softmax over prefix and tail together) with
the prefix held once per row: queries of every copy meet the row's prefix keys in one
batched product. Its own hooks still fire on what they see in TransformerLens: hook_q,
hook_k, hook_v (the tail's), hook_rot_q and hook_z (where head ablations act). hook_rot_k,
hook_attn_scores and hook_pattern would see only the tail's keys, so a hook there is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

UNSEEN = ("hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_result")


def supported(model) -> bool:
    """Whether the model's attention is one this module reproduces: plain scaled dot-product
    attention with rotary or learned absolute positions (added before the first block), no
    softcap, sinks or length scaling of the scores, heads' outputs summed by W_O."""
    cfg = model.cfg
    off = ("use_attn_result", "use_logn_attn", "use_attention_sinks", "use_dynamic_ntk_rope", "load_in_4bit", "clip_qkv")
    return (cfg.positional_embedding_type in ("rotary", "standard") and not any(getattr(cfg, f, None) for f in off)
            and cfg.attention_dir == "causal" and (getattr(cfg, "attn_scores_soft_cap", 0) or 0) <= 0
            and not str(cfg.original_architecture).startswith("Olmo"))


def _grouped(x: Float[Tensor, "batch t heads d"], copies: int, kv_heads: int) -> Tensor:
    """(copies * rows, t, kv * g, d) -> (rows * kv, copies * t * g, d): each row's and key
    head's queries of every copy together, as one batch of a product with that row's keys."""
    b, t, h, d = x.shape
    rows, g = b // copies, h // kv_heads
    x = x.reshape(copies, rows, t, kv_heads, g, d).permute(1, 3, 0, 2, 4, 5)
    return x.reshape(rows * kv_heads, copies * t * g, d)


def _ungrouped(x: Tensor, copies: int, kv_heads: int, t: int) -> Float[Tensor, "batch heads t last"]:
    """The inverse layout for a product's result: (rows * kv, copies * t * g, last) ->
    (copies * rows, kv * g, t, last), heads ordered as repeat_interleave orders them."""
    rk, ctg, last = x.shape
    rows, g = rk // kv_heads, ctg // (copies * t)
    x = x.reshape(rows, kv_heads, copies, t, g, last).permute(2, 0, 1, 4, 3, 5)
    return x.reshape(copies * rows, kv_heads * g, t, last)


def _attention(attn, prefix_k: Tensor, prefix_v: Tensor, copies: int):
    """A forward for `attn` (an attention module) on tails whose prefix is prefix_k/_v
    (rows, prefix, kv_heads, d_head; keys unrotated, as TransformerLens caches them)."""
    n_prefix, kv_heads = prefix_k.shape[1], prefix_k.shape[2]
    rotary = attn.cfg.positional_embedding_type == "rotary"
    keys = attn.apply_rotary(prefix_k, 0) if rotary else prefix_k
    keys_t = keys.permute(0, 2, 3, 1).reshape(-1, keys.shape[-1], n_prefix)  # (rows * kv, d, prefix)
    values = prefix_v.permute(0, 2, 1, 3).reshape(-1, n_prefix, prefix_v.shape[-1])  # (rows * kv, prefix, d)

    def forward(query_input, key_input, value_input, past_kv_cache_entry=None, additive_attention_mask=None,
                attention_mask=None, position_bias=None):
        assert past_kv_cache_entry is None and attention_mask is None  # no padding: every row is whole
        assert additive_attention_mask is None and position_bias is None
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
        t, g = q.shape[1], q.shape[2] // k.shape[2]
        if rotary:
            q = attn.hook_rot_q(attn.apply_rotary(q, n_prefix))
            k = attn.apply_rotary(k, n_prefix)
        on_prefix = _ungrouped(torch.bmm(_grouped(q, copies, kv_heads), keys_t), copies, kv_heads, t)
        q_, k_ = q.transpose(1, 2), k.repeat_interleave(g, dim=2).permute(0, 2, 3, 1)
        on_tail = (q_ @ k_).masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        pattern = (torch.cat([on_prefix, on_tail], dim=-1) / attn.attn_scale).softmax(-1)
        from_prefix = _ungrouped(torch.bmm(_grouped(pattern[..., :n_prefix].transpose(1, 2), copies, kv_heads),
                                           values), copies, kv_heads, t)
        from_tail = pattern[..., n_prefix:] @ v.repeat_interleave(g, dim=2).transpose(1, 2)
        z = attn.hook_z((from_prefix + from_tail).transpose(1, 2))  # (batch, t, heads, d_head)
        w = attn.W_O.reshape(-1, attn.W_O.shape[-1]).T  # (d_model, heads * d_head)
        return F.linear(z.reshape(z.shape[0], t, -1), w, attn.b_O)

    return forward


@contextmanager
def shared_prefix(model, cache, copies: int, start: int) -> Iterator[None]:
    """Within the block, the model's layers from `start` on attend over `cache` (a frozen
    TransformerLensKeyValueCache of `rows` sequences) for an input of `copies` * `rows`
    tails, copy-major, run without a past_kv_cache."""
    attns = [block.attn for block in model.blocks[start:]]
    for attn in attns:
        hooked = [name for name in UNSEEN if getattr(getattr(attn, name, None), "fwd_hooks", None)]
        if hooked:
            raise ValueError(f"shared_prefix cannot run hooks on {hooked}: they would see only the tail's keys")
    for attn, entry in zip(attns, cache.entries[start:], strict=True):
        attn.forward = _attention(attn, entry.past_keys, entry.past_values, copies)
    try:
        yield
    finally:
        for attn in attns:
            del attn.forward  # the class's method again
