"""Attention heads (the study's Figures 2 and 5): which heads copy the context's answers.

DVC stage `heads@<model>`. Reads params.yaml [seed, models.<model>, prompt, family,
stats, heads]; writes data/<model>/heads.safetensors and
data/<model>/heads.json. The paper draws its figures from them.

Every head is measured, and the data name the heads:
- induction and previous-token scores, on repeated random token sequences (the standard
  test: in the second copy, attention to the token after the current token's first
  occurrence; and attention to the previous token);
- context-answer attention: at the final position, the attention paid to the tokens of
  each earlier example's answer, on the canonical prompt and on a seeded family of
  few-shot prompts (mean and 95% bootstrap interval over prompts);
- direct logit attribution (DLA): each head's output at the final position, scaled by the
  final norm's scale as cached in the forward pass, projected on the unembedding
  direction of logit(misconception) - logit(correct). On the family, the same for
  logit(previous example's answer) - logit(correct): how much a head pushes the copy;
- ablation (the study's hypothesis A): one head's output zeroed (or set to its mean),
  the change in the first-token probabilities of the answers on the canonical prompt and,
  with 95% bootstrap intervals, on the family (correct answer against the copy).

    python -m analysis.heads --model smollm2-135m
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analysis.artifacts import (Level, Name, Prob, Schema, StagePaths, StageResults, load_json, load_tensors,
                                save_json, save_tensors)
from analysis.params import Params
from analysis.arithmetic import parse_arithmetic
from analysis.prompts import (
    PreparedPrompt,
    whole_copy,
    equal_length_batches,
    prepare_arithmetic,
    prepare_family,
    prepare_prompt,
    run_by_length,
    token_positions,
)
from analysis.scoring import first_token_probs
from analysis.stage import run_stage
from analysis.stats import Estimate, bootstrap_ci, estimate_mean
from analysis.timing import progress

STAGE = "heads"
# What `dvc metrics show` lists for this stage (paths into the results, fnmatch patterns).
HEADLINE = ("base_canonical.*", "base_family.*", "dla_total", "dla_parts.heads", "dla_parts.mlp",
            "top_induction_head.*")


# --- compute ---------------------------------------------------------------------------

def _pattern_hooks(model, store: dict[int, Tensor], reduce):
    """Forward hooks that keep reduce(pattern) of every layer; pattern is (batch, head, q, k)."""
    def hook(pattern, hook):
        store[hook.layer()] = reduce(pattern)
    return [(f"blocks.{layer}.attn.hook_pattern", hook) for layer in range(model.cfg.n_layers)]


def ordinary_token_ids(model) -> Int[Tensor, "n"]:
    special = set(model.tokenizer.all_special_ids)
    return torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])


@torch.no_grad()
def compute_induction_scores(model, n_sequences: int, half_length: int, seed: int
                             ) -> tuple[Float[Tensor, "layer head"], Float[Tensor, "layer head"]]:
    """(induction score, previous-token score) of every head on repeated random tokens.

    Each sequence is [BOS] + r + r for r of `half_length` random ordinary tokens. A query
    at position q in the second copy has its key `half_length - 1` back: the token after
    the first occurrence of the token at q. The previous-token score is the attention from
    every token but the first to the token just before it.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = ordinary_token_ids(model)
    random_half = vocab[torch.randint(len(vocab), (n_sequences, half_length), generator=generator)]
    tokens = torch.cat([random_half, random_half], dim=1)
    start = 0
    if model.cfg.default_prepend_bos:
        tokens = torch.cat([torch.full((n_sequences, 1), model.tokenizer.bos_token_id), tokens], dim=1)
        start = 1
    induction: dict[int, Tensor] = {}
    previous: dict[int, Tensor] = {}

    def reduce(pattern: Tensor) -> Tensor:
        ind = pattern.diagonal(offset=-(half_length - 1), dim1=-2, dim2=-1)  # (batch, head, q') for q = q' + half - 1
        second_copy = ind[..., start + 1:]  # queries q >= start + half_length
        prev = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., start:]  # queries q >= start + 1
        return torch.stack([second_copy.mean(dim=(0, 2)), prev.mean(dim=(0, 2))])

    store: dict[int, Tensor] = {}
    model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=_pattern_hooks(model, store, reduce))
    for layer, value in store.items():
        induction[layer], previous[layer] = value[0].cpu(), value[1].cpu()
    layers = range(model.cfg.n_layers)
    return torch.stack([induction[l] for l in layers]), torch.stack([previous[l] for l in layers])


@dataclass(frozen=True)
class FinalAttention:
    to_shot_answers: Float[Tensor, "batch layer head shot"]  # summed over each answer's tokens
    to_query_operands: Float[Tensor, "batch layer head operand"]


@torch.no_grad()
def compute_final_attention(model, tokens: Int[Tensor, "batch pos"], shot_positions: list[list[list[int]]],
                            operand_positions: list[list[list[int]]]) -> FinalAttention:
    """Attention from the final position to each example's answer and each query operand.

    All prompts in the batch have the same length; positions are per prompt.
    """
    store: dict[int, Tensor] = {}
    model.run_with_hooks(tokens.to(model.cfg.device),
                         fwd_hooks=_pattern_hooks(model, store, lambda p: p[:, :, -1, :].cpu()))
    final = torch.stack([store[l] for l in range(model.cfg.n_layers)], dim=1)  # (batch, layer, head, key)

    def gather(positions: list[list[list[int]]]) -> Tensor:
        return torch.stack([
            torch.stack([final[b][..., span].sum(-1) for span in spans], dim=-1)
            for b, spans in enumerate(positions)
        ])

    return FinalAttention(gather(shot_positions), gather(operand_positions))


@dataclass(frozen=True)
class HeadAttribution:
    per_head: Float[Tensor, "batch layer head"]  # each head's direct effect on the logit difference
    mlp: Float[Tensor, "batch layer"]
    attn_bias: Float[Tensor, "batch layer"]  # b_O of each layer, not owned by any head
    embed: Float[Tensor, "batch"]  # token (and learned position) embeddings
    unembed_bias: Float[Tensor, "batch"]
    total: Float[Tensor, "batch"]  # the model's own logit difference

    def parts_sum(self) -> Float[Tensor, "batch"]:
        return (self.per_head.sum((1, 2)) + self.mlp.sum(1) + self.attn_bias.sum(1)
                + self.embed + self.unembed_bias)

    def parts(self, row: int) -> dict[str, float]:
        """One prompt's logit difference, split: heads, mlp, attn_bias, embed, unembed_bias."""
        return {"heads": self.per_head[row].sum().item(), "mlp": self.mlp[row].sum().item(),
                "attn_bias": self.attn_bias[row].sum().item(), "embed": self.embed[row].item(),
                "unembed_bias": self.unembed_bias[row].item()}


def _dla_hooks(name: str) -> bool:
    return name.endswith(("attn.hook_z", "hook_mlp_out", "hook_embed", "hook_pos_embed", "ln_final.hook_scale"))


@torch.no_grad()
def compute_head_dla(model, tokens: Int[Tensor, "batch pos"], plus_ids: Int[Tensor, "batch"],
                     minus_ids: Int[Tensor, "batch"]) -> HeadAttribution:
    """Direct logit attribution of every head to logit(plus) - logit(minus), final position.

    The final residual stream is the sum of the heads' outputs (z @ W_O), the attention and
    MLP outputs' other parts and the embeddings. Each part goes through the final norm with
    the scale of the actual forward pass (transformer_lens' apply_ln_to_stack), then onto
    the unembedding direction W_U[:, plus] - W_U[:, minus]. The parts add up to the model's
    logit difference. Heads are computed at the final position only.
    """
    logits, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=_dla_hooks)
    n_layers = model.cfg.n_layers
    batch = torch.arange(len(tokens))
    plus_ids, minus_ids = plus_ids.to(logits.device), minus_ids.to(logits.device)
    total = logits[batch, -1, plus_ids] - logits[batch, -1, minus_ids]
    direction = model.tokens_to_residual_directions(plus_ids) - model.tokens_to_residual_directions(minus_ids)
    direction = direction.reshape(len(tokens), -1)  # (batch, d_model)

    def attribute(stack: Float[Tensor, "... batch d_model"]) -> Float[Tensor, "... batch"]:
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        return (scaled * direction).sum(-1)

    z = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][:, -1] for layer in range(n_layers)])
    heads = torch.einsum("lbhd,lhdm->lhbm", z, model.W_O)  # (layer, head, batch, d_model)
    mlp = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(n_layers)])
    embed = cache["hook_embed"][:, -1]
    if "hook_pos_embed" in cache:
        embed = embed + cache["hook_pos_embed"][:, -1]
    attn_bias = model.b_O[:, None, :].expand(n_layers, len(tokens), -1)
    return HeadAttribution(
        per_head=attribute(heads).permute(2, 0, 1).cpu(),
        mlp=attribute(mlp).T.cpu(),
        attn_bias=attribute(attn_bias).T.cpu(),
        embed=attribute(embed).cpu(),
        unembed_bias=(model.b_U[plus_ids] - model.b_U[minus_ids]).cpu(),
        total=total.cpu(),
    )


def head_ablation_hooks(layer: int, head: int, value: Tensor | None = None) -> list:
    """Hooks that replace one head's output z (before W_O) with zero or a fixed value."""
    def hook(z: Tensor, hook) -> Tensor:
        z = z.clone()
        z[:, :, head] = 0.0 if value is None else value.to(z.device)
        return z
    return [(f"blocks.{layer}.attn.hook_z", hook)]


@torch.no_grad()
def mean_head_output(model, prepared: list[PreparedPrompt], layer: int, head: int) -> Float[Tensor, "d_head"]:
    """A head's z averaged over every position of every prompt (for mean ablation)."""
    total, count = 0.0, 0
    name = f"blocks.{layer}.attn.hook_z"
    for indices in equal_length_batches([len(p.tokens) for p in prepared]):
        _, cache = model.run_with_cache(torch.stack([prepared[i].tokens for i in indices]).to(model.cfg.device),
                                        names_filter=name, stop_at_layer=layer + 1)
        z = cache[name][:, :, head]
        total = total + z.sum((0, 1)).cpu()
        count += z.shape[0] * z.shape[1]
    return total / count


# --- results ---------------------------------------------------------------------------

class Interval(Schema):
    mean: list[list[float]]
    low: list[list[float]]
    high: list[list[float]]
    n_prompts: int


class HeadSummary(Schema):
    layer: int
    head: int
    context_answer_attention: Prob  # canonical prompt, to the previous example's answer
    family_mean: Prob
    family_low: Prob
    family_high: Prob
    induction_score: float
    prev_token_score: float
    dla: float  # canonical: logit(misconception) - logit(correct)
    copy_dla_family_mean: float  # family: logit(previous answer) - logit(correct)


class ConfiguredHead(Schema):
    layer: int
    head: int
    to_previous_answer: Prob  # canonical prompt, final position
    to_current_operands: Prob  # both operands of the query, summed
    to_each_operand: list[Prob]
    rank_by_family_attention: int  # 1 = the strongest head


class SpacingAttention(Schema):
    prompt: str
    to_previous_answer: list[Prob]  # for each of figure_heads, at the final position


class HeadAblation(Schema):
    layer: int
    head: int
    roles: list[Literal["the study's head", "top induction", "attends to the previous answer",
                         "pushes the misconception (DLA)"]]
    canonical: dict[str, float]  # change in first-token probability: correct, misconception
    family: dict[str, Estimate]  # mean change over the family: correct; copy (on the whole-copy prompts)


class HeadsMetrics(StageResults):
    model: Name
    ci_level: Level
    n_copy_prompts: int  # family prompts whose copy is one token after the context (prompts.whole_copy)
    n_layers: int
    n_heads: int
    prompt: str
    control_prompt: str
    prompt_tokens: list[str]
    control_tokens: list[str]
    induction_score: list[list[float]]
    prev_token_score: list[list[float]]
    context_answer_attention: list[list[float]]
    context_answer_attention_by_shot: list[list[list[float]]]  # (layer, head, shot), canonical
    context_answer_attention_family: Interval
    dla: list[list[float]]
    dla_total: float  # the model's logit(misconception) - logit(correct)
    dla_parts: dict[str, float]  # heads, mlp, attn_bias, embed, unembed_bias: they sum to dla_total
    copy_dla_family: Interval  # on the whole-copy prompts
    top_heads: list[HeadSummary]
    top_dla_heads: list[HeadSummary]  # the heads that push the misconception most (canonical DLA)
    top_induction_head: HeadSummary
    configured_head: ConfiguredHead | None
    figure_heads: list[list[int]]  # the heads drawn in Figures 2 and 5, [layer, head]
    spacing: dict[str, SpacingAttention]  # the canonical prompt spaced otherwise (Figure 7)
    ablation: Literal["zero", "mean"]
    base_canonical: dict[str, Prob]  # first-token probabilities without ablation
    base_family: dict[str, Prob]  # their means over the family
    ablations: list[HeadAblation]
    family_examples: list[str]


def curves(metrics: HeadsMetrics) -> dict[str, list[dict[str, float]]]:
    """The per-head curve that dvc.yaml declares as a plot (StageSpec.plots), layer-major."""
    rows = [(score, dla) for scores, dlas in zip(metrics.induction_score, metrics.dla, strict=True)
            for score, dla in zip(scores, dlas, strict=True)]
    return {"heads": [{"head": i, "induction_score": score, "dla": dla} for i, (score, dla) in enumerate(rows)]}


# --- stage -----------------------------------------------------------------------------

def _final_attention_of(model, prompts, prepared: list[PreparedPrompt]) -> FinalAttention:
    def attention(tokens: Tensor, indices: list[int]) -> tuple[Tensor, Tensor]:
        shots = [token_positions(model, prepared[i], prompts[i].shot_answer_spans()) for i in indices]
        operands = [token_positions(model, prepared[i], prompts[i].query_operand_spans()) for i in indices]
        result = compute_final_attention(model, tokens, shots, operands)
        return result.to_shot_answers, result.to_query_operands

    return FinalAttention(*run_by_length(prepared, attention))


def _copy_dla_of(model, prepared: list[PreparedPrompt]) -> Tensor:
    def copy_dla(tokens: Tensor, indices: list[int]) -> Tensor:
        plus = torch.tensor([prepared[i].answers["copy"].first_token_id for i in indices])
        minus = torch.tensor([prepared[i].answers["correct"].first_token_id for i in indices])
        return compute_head_dla(model, tokens, plus, minus).per_head

    return run_by_length(prepared, copy_dla)


def _patterns(model, tokens: Tensor) -> Tensor:
    store: dict[int, Tensor] = {}
    with torch.no_grad():
        model.run_with_hooks(tokens[None].to(model.cfg.device),
                             fwd_hooks=_pattern_hooks(model, store, lambda p: p[0].cpu()))
    return torch.stack([store[l] for l in range(model.cfg.n_layers)])  # (layer, head, q, k)


@dataclass(frozen=True)
class FamilyScores:
    prompts: list  # the family's ArithmeticPrompts
    prepared: list[PreparedPrompt]
    attention: Float[Tensor, "prompt layer head"]  # final position -> previous example's answer
    copy_dla: Float[Tensor, "copy_prompt layer head"]  # logit(copy) - logit(correct), direct (whole_copy)
    attention_ci: tuple[Tensor, Tensor]
    copy_dla_ci: tuple[Tensor, Tensor]


def family_scores(model, params: Params) -> FamilyScores:
    prompts, prepared = prepare_family(model, params.family)
    attention = _final_attention_of(model, prompts, prepared).to_shot_answers[..., -1]
    copy_dla = _copy_dla_of(model, prepared)[whole_copy(prepared)]
    n_boot, level = params.stats.bootstrap_resamples, params.stats.ci_level
    return FamilyScores(prompts, prepared, attention, copy_dla,
                        bootstrap_ci(attention, n_boot, params.seed, level),
                        bootstrap_ci(copy_dla, n_boot, params.seed, level))


def summarize_head(layer: int, head: int, canon_prev: Tensor, fam: FamilyScores, induction: Tensor,
                   previous: Tensor, dla: Tensor) -> HeadSummary:
    return HeadSummary(
        layer=layer, head=head,
        context_answer_attention=canon_prev[layer, head].item(),
        family_mean=fam.attention.mean(0)[layer, head].item(),
        family_low=fam.attention_ci[0][layer, head].item(), family_high=fam.attention_ci[1][layer, head].item(),
        induction_score=induction[layer, head].item(), prev_token_score=previous[layer, head].item(),
        dla=dla[layer, head].item(), copy_dla_family_mean=fam.copy_dla.mean(0)[layer, head].item(),
    )


def configured_head(spec, canon_attn: FinalAttention, ranked: list[tuple[int, int]]) -> ConfiguredHead | None:
    """The head named in params (the study's L8H6 for GPT-2 small), measured like the others."""
    if spec.configured_head is None:
        return None
    layer, head = spec.configured_head.layer, spec.configured_head.head
    to_operands = canon_attn.to_query_operands[0, layer, head]
    return ConfiguredHead(layer=layer, head=head,
                          to_previous_answer=canon_attn.to_shot_answers[0, layer, head, -1].item(),
                          to_current_operands=to_operands.sum().item(), to_each_operand=to_operands.tolist(),
                          rank_by_family_attention=ranked.index((layer, head)) + 1)


def head_roles(configured: ConfiguredHead | None, top_induction: HeadSummary, top: list[HeadSummary],
               top_dla: list[HeadSummary]) -> dict[tuple[int, int], list[str]]:
    """The candidate heads for ablation, each with why it is a candidate."""
    roles: dict[tuple[int, int], list[str]] = {}
    if configured:
        roles.setdefault((configured.layer, configured.head), []).append("the study's head")
    roles.setdefault((top_induction.layer, top_induction.head), []).append("top induction")
    for h in top[:3]:
        roles.setdefault((h.layer, h.head), []).append("attends to the previous answer")
    for h in top_dla[:2]:
        roles.setdefault((h.layer, h.head), []).append("pushes the misconception (DLA)")
    return roles


def ablate_heads(model, params: Params, roles: dict[tuple[int, int], list[str]], prepared: PreparedPrompt,
                 family: list[PreparedPrompt]) -> tuple[dict[str, float], dict[str, float], list[HeadAblation]]:
    """(base canonical probs, base family means, one HeadAblation per candidate head)."""
    n_boot, level, seed = params.stats.bootstrap_resamples, params.stats.ci_level, params.seed
    base_canonical = first_token_probs(model, [prepared], ("correct", "misconception"))[0]
    base_family = first_token_probs(model, family, ("correct", "copy"))
    copy_rows = whole_copy(family)

    def change(delta: Tensor, column: int) -> Estimate:
        return estimate_mean(delta[copy_rows, column] if column else delta[:, column], n_boot, seed, level)

    ablations = []
    for (layer, head), head_roles_ in progress(list(roles.items()), "ablating heads", unit="head"):
        value = mean_head_output(model, family, layer, head) if params.heads.ablation == "mean" else None
        hooks = head_ablation_hooks(layer, head, value)
        canonical = first_token_probs(model, [prepared], ("correct", "misconception"), hooks)[0] - base_canonical
        delta = first_token_probs(model, family, ("correct", "copy"), hooks) - base_family
        ablations.append(HeadAblation(
            layer=layer, head=head, roles=head_roles_,
            canonical={"correct": canonical[0].item(), "misconception": canonical[1].item()},
            family={name: change(delta, i) for i, name in enumerate(("correct", "copy"))},
        ))
    return ({"correct": base_canonical[0].item(), "misconception": base_canonical[1].item()},
            {"correct": base_family[:, 0].mean().item(), "copy": base_family[copy_rows, 1].mean().item()}, ablations)


def spacing_attention(model, params: Params, heads: list[list[int]]) -> dict[str, SpacingAttention]:
    spacing = {}
    for name, text in params.prompt.spacing_variants.items():
        variant, prepared = prepare_arithmetic(model, text, params.prompt.answers.model_dump())
        attention = _final_attention_of(model, [variant], [prepared]).to_shot_answers[0, ..., -1]
        spacing[name] = SpacingAttention(prompt=prepared.context,
                                         to_previous_answer=[attention[l, h].item() for l, h in heads])
    return spacing


def _figure_heads(configured: ConfiguredHead | None, top_induction: HeadSummary, top: list[HeadSummary]) -> list:
    pairs = ([[configured.layer, configured.head]] if configured else []) + \
        [[top_induction.layer, top_induction.head], [top[0].layer, top[0].head]]
    return [pair for i, pair in enumerate(pairs) if pair not in pairs[:i]]


def run(model, params: Params, key: str, paths: StagePaths) -> HeadsMetrics:
    answers, n_heads = params.prompt.answers.model_dump(), model.cfg.n_heads
    canonical = parse_arithmetic(params.prompt.canonical)
    prepared = prepare_prompt(model, canonical.text, answers)
    control = prepare_prompt(model, params.prompt.control, answers)
    ind = params.heads.induction
    induction, previous = compute_induction_scores(model, ind.n_sequences, ind.half_length, params.seed)
    canon_attn = _final_attention_of(model, [canonical], [prepared])
    dla = compute_head_dla(model, prepared.tokens[None],
                           torch.tensor([prepared.answers["misconception"].first_token_id]),
                           torch.tensor([prepared.answers["correct"].first_token_id]))
    fam = family_scores(model, params)
    canon_prev = canon_attn.to_shot_answers[0, ..., -1]

    def summary(layer: int, head: int) -> HeadSummary:
        return summarize_head(layer, head, canon_prev, fam, induction, previous, dla.per_head[0])

    ranked = [divmod(int(i), n_heads) for i in fam.attention.mean(0).flatten().argsort(descending=True)]
    top = [summary(*pair) for pair in ranked[: params.heads.top_k]]
    top_induction = summary(*divmod(int(induction.flatten().argmax()), n_heads))
    top_dla = [summary(*divmod(int(i), n_heads))
               for i in dla.per_head[0].flatten().argsort(descending=True)[: params.heads.top_k]]
    configured = configured_head(params.model(key), canon_attn, ranked)
    figure_heads = _figure_heads(configured, top_induction, top)
    base_canonical, base_family, ablations = ablate_heads(
        model, params, head_roles(configured, top_induction, top, top_dla), prepared, fam.prepared)

    def interval(values: Tensor, ci: tuple[Tensor, Tensor]) -> Interval:
        return Interval(mean=values.mean(0).tolist(), low=ci[0].tolist(), high=ci[1].tolist(),
                        n_prompts=len(values))

    metrics = HeadsMetrics(
        model=key, ci_level=params.stats.ci_level, n_layers=model.cfg.n_layers, n_heads=n_heads,
        n_copy_prompts=len(fam.copy_dla), prompt=prepared.context, control_prompt=control.context,
        prompt_tokens=list(prepared.str_tokens), control_tokens=list(control.str_tokens),
        induction_score=induction.tolist(), prev_token_score=previous.tolist(),
        context_answer_attention=canon_prev.tolist(),
        context_answer_attention_by_shot=canon_attn.to_shot_answers[0].tolist(),
        context_answer_attention_family=interval(fam.attention, fam.attention_ci),
        dla=dla.per_head[0].tolist(), dla_total=dla.total[0].item(), dla_parts=dla.parts(0),
        copy_dla_family=interval(fam.copy_dla, fam.copy_dla_ci),
        top_heads=top, top_dla_heads=top_dla, top_induction_head=top_induction, configured_head=configured,
        figure_heads=figure_heads, spacing=spacing_attention(model, params, figure_heads),
        family_examples=[p.text for p in fam.prompts[:3]], ablation=params.heads.ablation,
        base_canonical=base_canonical, base_family=base_family, ablations=ablations,
    )
    patterns = {f"pattern_{name}": _patterns(model, p.tokens) for name, p in (("canonical", prepared), ("control", control))}
    save_tensors(paths.tensors, {
        "induction_score": induction, "prev_token_score": previous,
        "family_prev_answer_attention": fam.attention, "family_copy_dla": fam.copy_dla,
        "dla": dla.per_head[0], **patterns,
    })
    save_json(paths.results, metrics)
    return metrics


def load_results(paths: StagePaths) -> tuple[HeadsMetrics, dict[str, Tensor]]:
    metrics = load_json(paths.results, HeadsMetrics)
    shape = (metrics.n_layers, metrics.n_heads)
    tensors = load_tensors(paths.tensors, {"induction_score": shape, "dla": shape, "pattern_canonical": 4,
                                           "pattern_control": 4})
    return metrics, tensors


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv, curves=curves)


if __name__ == "__main__":
    main()
