"""The model's own errors, explained causally: error sets, activation and attribution
patching, and ablations against random controls (the study's Figures 4 and 5, measured).

DVC stage `patching@<model>`. Reads params.yaml [seed, models.<model>, prompt, stats,
patching]; writes data/<model>/patching.safetensors and data/<model>/metrics/patching.json.

Error sets (analysis/arithmetic.py): pairs of prompts of equal token length with the same
query. In the `copy` set every example of the corrupt context answers the candidate error
W (`0 + 7 = 7. 4 + 3 = 7. ...`) and the clean one's examples answer other numbers; in the `sequence` set the corrupt
context's answers step towards the next term (1, 3 -> 5) and the clean one's do not.
Each prompt is scored by whole answers, and the model's greedy answer is read. Patching
and ablation run on up to `patching.n_patched` pairs on which the model gives the error
(the first pairs, if fewer than two such pairs exist).

Per pair the metric is the logit difference LD = logit(error) - logit(correct) at the
final position (first distinguishing tokens). Patching runs the corrupt prompt with one
activation taken from the clean run; its effect is normalised by the set's mean gap,
(LD_patched - LD_corrupt) / mean(LD_clean - LD_corrupt): 0 is the corrupt run, and 1
means that patching this one activation moves LD as far as the whole clean context does.
Intervals: percentile bootstrap over pairs (each pair has its own context); the set's
mean gap is held fixed. Patched sites:
- the residual stream before each layer, at the positions where the two prompts differ
  (together) and at each of the last positions (`start_at_layer`: only layers >= L run);
- every MLP layer's output and every head's output (`hook_z`) at the final position.
Attribution patching estimates all of these from one forward and backward pass per run
(gradient of LD times the clean-minus-corrupt activation); the heads it ranks highest
are then patched exactly, and the rank agreement of the two is reported.
Ablation: the heads whose exact effect passes `patching.ablate_threshold`, mean-ablated
together (at each position, their mean output there over the clean prompts of the same
length), against the same number of random heads drawn `patching.random_draws` times.

    python -m analysis.patching --model smollm2-135m
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis.arithmetic import PromptPair, copy_pairs, sequence_pairs
from analysis.artifacts import Schema, StagePaths, load_json, save_json, save_tensors
from analysis.params import Params
from analysis.plotting import COLORS, error_bars, styled
from analysis.prompts import PreparedPrompt, equal_length_batches, prepare_prompt
from analysis.scoring import final_logits, score_and_read
from analysis.stage import run_stage
from analysis.stats import Estimate, estimate_mean

STAGE = "patching"
ANSWERS = ("error", "correct")


# --- compute ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PairBatch:
    """Equal-length corrupt and clean prompts, with the answers' first tokens."""

    corrupt: Int[Tensor, "batch pos"]
    clean: Int[Tensor, "batch pos"]
    error_ids: Int[Tensor, "batch"]
    correct_ids: Int[Tensor, "batch"]

    @property
    def changed(self) -> Bool[Tensor, "batch pos"]:
        return self.corrupt != self.clean


def logit_diff_at_end(model, batch: PairBatch, resid: Tensor | None = None, start: int = 0,
                      hooks: list | None = None) -> Float[Tensor, "batch"]:
    """LD at the final position of the corrupt prompts, or of the residual stream `resid`
    entering block `start` (only blocks start.. run). `resid` may hold several copies of
    the batch, one after another: their LDs come back in the same order."""
    inputs = batch.corrupt.to(model.cfg.device) if resid is None else resid
    with model.hooks(fwd_hooks=hooks or []):
        out = model(inputs, start_at_layer=None if resid is None else start, stop_at_layer=model.cfg.n_layers)
    last = out[:, -1:]
    logits = model.unembed(model.ln_final(last) if model.cfg.normalization_type else last)[:, 0].cpu()
    copies = len(logits) // len(batch.error_ids)
    rows = torch.arange(len(logits))
    return logits[rows, batch.error_ids.repeat(copies)] - logits[rows, batch.correct_ids.repeat(copies)]


def _resid_names(model) -> list[str]:
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def compute_resid_patching(model, batch: PairBatch, sites: list[Bool[Tensor, "batch pos"]]
                           ) -> Float[Tensor, "batch layer site"]:
    """LD of the corrupt run with the clean residual stream (before each layer) at each
    site's positions; one pass per layer, from that layer on, with every site in the batch."""
    names = _resid_names(model)
    _, clean = model.run_with_cache(batch.clean.to(model.cfg.device), names_filter=lambda n: n in names)
    _, corrupt = model.run_with_cache(batch.corrupt.to(model.cfg.device), names_filter=lambda n: n in names)
    masks = torch.cat(sites).to(model.cfg.device)[..., None]  # (site * batch, pos, 1)
    out = torch.empty(len(batch.corrupt), model.cfg.n_layers, len(sites))
    for layer, name in enumerate(names):
        copies = len(sites)
        patched = torch.where(masks, clean[name].repeat(copies, 1, 1), corrupt[name].repeat(copies, 1, 1))
        out[:, layer] = logit_diff_at_end(model, batch, patched, layer).reshape(copies, -1).T
    return out


def _final_position_patch(name: str, clean_value: Tensor, head: int | None = None):
    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        if head is None:
            act[:, -1] = clean_value
        else:
            act[:, -1, head] = clean_value
        return act
    return [(name, hook)]


def _component_name(layer: int, head: int | None) -> str:
    return f"blocks.{layer}.{'hook_mlp_out' if head is None else 'attn.hook_z'}"


@torch.no_grad()
def compute_component_patching(model, batch: PairBatch, components: list[tuple[int, int | None]]
                               ) -> Float[Tensor, "batch component"]:
    """LD with one component's final-position output from the clean run: (layer, None) is
    that layer's MLP, (layer, head) one head's z. Each run starts at the component's layer,
    from the corrupt residual stream cached there."""
    names = {_component_name(layer, head) for layer, head in components}
    starts = {f"blocks.{layer}.hook_resid_pre" for layer, _ in components}
    _, clean = model.run_with_cache(batch.clean.to(model.cfg.device), names_filter=lambda n: n in names)
    _, corrupt = model.run_with_cache(batch.corrupt.to(model.cfg.device), names_filter=lambda n: n in starts)
    out = torch.empty(len(batch.corrupt), len(components))
    for i, (layer, head) in enumerate(components):
        name = _component_name(layer, head)
        value = clean[name][:, -1] if head is None else clean[name][:, -1, head]
        out[:, i] = logit_diff_at_end(model, batch, corrupt[f"blocks.{layer}.hook_resid_pre"], layer,
                                      hooks=_final_position_patch(name, value, head))
    return out


@dataclass(frozen=True)
class Attribution:
    """Gradient x (clean - corrupt) activation, per prompt: first-order patching effects on LD."""

    resid: Float[Tensor, "batch layer pos"]
    mlp: Float[Tensor, "batch layer"]  # final position
    heads: Float[Tensor, "batch layer head"]  # final position


def _attribution_names(name: str) -> bool:
    return name.endswith(("hook_resid_pre", "hook_mlp_out", "attn.hook_z"))


def compute_attribution(model, batch: PairBatch) -> Attribution:
    """Attribution patching: one forward/backward on the corrupt prompts, one forward on the clean."""
    with torch.no_grad():
        _, clean = model.run_with_cache(batch.clean.to(model.cfg.device), names_filter=_attribution_names)
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        act.retain_grad()
        acts[hook.name] = act

    def track(embed: Tensor, hook) -> Tensor:  # gradients flow from here, whatever the weights' flags
        return embed.detach().requires_grad_(True)

    hooks = [("hook_embed", track), *((name, keep) for name in clean.keys())]
    with torch.enable_grad():
        logit_diff_at_end(model, batch, hooks=hooks).sum().backward()

    def attr(name: str) -> Tensor:
        return ((clean[name] - acts[name].detach()) * acts[name].grad).detach().cpu()

    n = model.cfg.n_layers
    mlp = (torch.zeros(len(batch.corrupt), n) if model.cfg.attn_only else
           torch.stack([attr(f"blocks.{l}.hook_mlp_out")[:, -1].sum(-1) for l in range(n)], dim=1))
    return Attribution(
        resid=torch.stack([attr(f"blocks.{l}.hook_resid_pre").sum(-1) for l in range(n)], dim=1),
        mlp=mlp,
        heads=torch.stack([attr(f"blocks.{l}.attn.hook_z")[:, -1].sum(-1) for l in range(n)], dim=1),
    )


def mean_ablation_hooks(heads: list[tuple[int, int]], means: Float[Tensor, "layer head pos d_head"]) -> list:
    """Hooks that set each listed head's z, at every position, to its mean there."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(layer: int):
        def hook(z: Tensor, hook) -> Tensor:
            z = z.clone()
            for head in by_layer[layer]:
                z[:, :, head] = means[layer, head].to(z.device)
            return z
        return hook
    return [(f"blocks.{layer}.attn.hook_z", make(layer)) for layer in by_layer]


@torch.no_grad()
def mean_head_outputs(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head pos d_head"]:
    """Every head's z at each position, averaged over the given equal-length prompts."""
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n.endswith("attn.hook_z"))
    return torch.stack([cache[f"blocks.{l}.attn.hook_z"].mean(0).transpose(0, 1)
                        for l in range(model.cfg.n_layers)]).cpu()


def random_head_sets(n_layers: int, n_heads: int, size: int, draws: int, seed: int) -> list[list[tuple[int, int]]]:
    """`draws` seeded sets of `size` distinct heads, each set different from the others."""
    generator = torch.Generator().manual_seed(seed)
    sets: list[list[tuple[int, int]]] = []
    while len(sets) < draws:
        picked = sorted(divmod(int(i), n_heads) for i in torch.randperm(n_layers * n_heads, generator=generator)[:size])
        if picked not in sets:
            sets.append(picked)
    return sets


def spearman(a: Tensor, b: Tensor) -> float:
    """Rank correlation of two vectors (ties broken by position)."""
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


# --- results ---------------------------------------------------------------------------

class Behaviour(Schema):
    error_rate: Estimate  # the greedy answer is the hypothesised error
    wrong_rate: Estimate  # the greedy answer is not the correct one
    p_error: Estimate  # whole-answer probability of the error
    p_correct: Estimate
    logit_diff: Estimate  # LD at the final position


class HeadEffect(Schema):
    layer: int
    head: int
    attribution: float  # normalised, first-order estimate
    exact: Estimate  # normalised, patched


class Ablation(Schema):
    heads: list[list[int]]  # [layer, head], mean-ablated together
    delta_logit_diff: Estimate  # ablated - corrupt, on the same pairs
    delta_error_rate: Estimate  # first-token: argmax is the error's first token
    random_delta_logit_diff: list[float]  # the same for each random draw of as many heads
    p_value: float  # share of random draws that lower LD at least as much (with the +1 correction)


class SetResult(Schema):
    name: str
    description: str
    n_pairs: int
    n_dropped: int  # pairs whose two prompts tokenize to different lengths
    n_patched: int  # pairs on which patching and ablation run
    patched_on: str  # which pairs those are
    examples: list[list[str]]  # [corrupt, clean, error, correct] for the first pairs
    corrupt: Behaviour
    clean: Behaviour
    mean_gap: float  # mean(LD_clean - LD_corrupt): the normaliser
    sites: list[str]  # residual-stream sites: "changed", then positions from the end
    site_tokens: list[str]  # the first pair's corrupt token at each site
    resid_exact: list[list[float]]  # (layer, site), normalised mean
    resid_attribution: list[list[float]]
    mlp_exact: list[Estimate]  # per layer
    mlp_attribution: list[float]
    head_attribution: list[list[float]]  # (layer, head)
    top_heads: list[HeadEffect]
    rank_agreement_heads: float  # Spearman, attribution vs exact, over top_heads
    rank_agreement_mlp: float  # over every MLP layer
    ablation: Ablation | None  # None when no head passes the threshold


class ExamplesResult(Schema):
    """The canonical query with and without the study's examples."""

    with_examples: str
    without_examples: str
    p: dict[str, dict[str, float]]  # prompt kind -> answer name -> whole-answer probability
    greedy: dict[str, int | None]


class PatchingMetrics(Schema):
    model: str
    n_layers: int
    n_heads: int
    ci_level: float
    ablate_threshold: float
    sets: dict[str, SetResult]
    examples: ExamplesResult


def load_results(paths: StagePaths) -> PatchingMetrics:
    return load_json(paths.metrics, PatchingMetrics)


# --- stage -----------------------------------------------------------------------------

def prepare_pairs(model, pairs: list[PromptPair]) -> tuple[list[PromptPair], list[tuple[PreparedPrompt, PreparedPrompt]]]:
    """Each pair prepared with its error and correct answers; pairs whose prompts tokenize
    to different lengths, or whose answers share a first token, are left out."""
    kept, prepared = [], []
    for pair in pairs:
        answers = {"error": f" {pair.error}", "correct": f" {pair.correct}"}
        corrupt, clean = (prepare_prompt(model, p.text, answers) for p in (pair.corrupt, pair.clean))
        ids = corrupt.first_token_ids
        if len(corrupt.tokens) == len(clean.tokens) and ids == clean.first_token_ids and len(set(ids)) == 2:
            kept.append(pair)
            prepared.append((corrupt, clean))
    return kept, prepared


def batches(prepared: list[tuple[PreparedPrompt, PreparedPrompt]]) -> list[tuple[list[int], PairBatch]]:
    out = []
    for idx in equal_length_batches([len(c.tokens) for c, _ in prepared]):
        ids = torch.tensor([prepared[i][0].first_token_ids for i in idx])
        out.append((idx, PairBatch(torch.stack([prepared[i][0].tokens for i in idx]),
                                   torch.stack([prepared[i][1].tokens for i in idx]), ids[:, 0], ids[:, 1])))
    return out


def _gather(groups: list[tuple[list[int], PairBatch]], n: int, compute) -> Tensor:
    """compute(batch) for every group, its rows put back in the pairs' order."""
    parts = [(idx, compute(batch)) for idx, batch in groups]
    out = torch.empty(n, *parts[0][1].shape[1:], dtype=parts[0][1].dtype)
    for idx, part in parts:
        out[idx] = part
    return out


def _sites(batch: PairBatch, n_last: int) -> list[Tensor]:
    """Position masks: the changed tokens together, then each of the last n_last positions."""
    columns = []
    for k in range(n_last, 0, -1):
        mask = torch.zeros_like(batch.changed)
        mask[:, -k] = True
        columns.append(mask)
    return [batch.changed, *columns]


def _behaviour(model, side: list[PreparedPrompt], pairs: list[PromptPair], params: Params
               ) -> tuple[Behaviour, Tensor, Tensor]:
    """The side's Behaviour; per pair its LD (a difference of first-token log-probabilities
    is one of logits) and whether the greedy answer is the error. One pass per context."""
    ids = [[p.answers[n].token_ids for p in side] for n in ANSWERS]
    scores, greedy, _ = score_and_read(model, [p.tokens for p in side] * 2, ids[0] + ids[1], max_tokens=3)
    p = scores.logprob.exp().reshape(2, len(side))
    ld = scores.first_logprob[: len(side)] - scores.first_logprob[len(side):]
    error = torch.tensor([g == pair.error for g, pair in zip(greedy[: len(side)], pairs, strict=True)]).double()
    wrong = torch.tensor([g != pair.correct for g, pair in zip(greedy[: len(side)], pairs, strict=True)]).double()

    def est(values: Tensor) -> Estimate:
        return estimate_mean(values.double(), params.stats.bootstrap_resamples, params.seed, params.stats.ci_level)

    return Behaviour(error_rate=est(error), wrong_rate=est(wrong), p_error=est(p[0]), p_correct=est(p[1]),
                     logit_diff=est(ld)), ld, error.bool()


def behaviour_of(model, params: Params, pairs: list[PromptPair], prepared: list[tuple[PreparedPrompt, PreparedPrompt]]
                 ) -> tuple[dict[str, Behaviour], dict[str, Tensor], Tensor]:
    """Per side (corrupt, clean): its Behaviour and its LDs over every pair; and per pair
    whether the model gives the error after the corrupt context."""
    results, lds, errs = {}, {}, {}
    for col, side in enumerate(("corrupt", "clean")):
        results[side], lds[side], errs[side] = _behaviour(model, [p[col] for p in prepared], pairs, params)
    return results, lds, errs["corrupt"]


def patched_subset(errs: Tensor, n_patched: int) -> tuple[list[int], str]:
    """The pairs to patch: those on which the model makes the error (up to n_patched), when
    there are at least two; else the first n_patched pairs."""
    erring = errs.nonzero()[:, 0].tolist()
    if len(erring) >= 2:
        return erring[:n_patched], "pairs where the model gives the error"
    return list(range(min(n_patched, len(errs)))), "the first pairs (too few errors to patch)"


@dataclass(frozen=True)
class Measured:
    ld_corrupt: Float[Tensor, "pair"]
    ld_clean: Float[Tensor, "pair"]
    resid: Float[Tensor, "pair layer site"]
    resid_attribution: Float[Tensor, "pair layer site"]
    mlp: Float[Tensor, "pair layer"]
    mlp_attribution: Float[Tensor, "pair layer"]
    head_attribution: Float[Tensor, "pair layer head"]


def measure(model, groups: list[tuple[list[int], PairBatch]], n: int, n_last: int, ld_corrupt: Tensor,
            ld_clean: Tensor) -> Measured:
    """Exact patching of residual sites and MLPs, and attribution of all, given the pairs' LDs."""
    layers = range(model.cfg.n_layers)
    attrs = [compute_attribution(model, batch) for _, batch in groups]
    per_group = iter(attrs)

    def at_sites(batch: PairBatch) -> Tensor:
        attr = next(per_group)
        return torch.stack([(attr.resid * m[:, None, :]).sum(-1) for m in _sites(batch, n_last)], dim=-1)

    return Measured(
        ld_corrupt=ld_corrupt, ld_clean=ld_clean,
        resid=_gather(groups, n, lambda b: compute_resid_patching(model, b, _sites(b, n_last))),
        resid_attribution=_gather(groups, n, at_sites),
        mlp=_gather(groups, n, lambda b: compute_component_patching(model, b, [(l, None) for l in layers])),
        mlp_attribution=_gather_parts(groups, n, [a.mlp for a in attrs]),
        head_attribution=_gather_parts(groups, n, [a.heads for a in attrs]),
    )


def _gather_parts(groups: list[tuple[list[int], PairBatch]], n: int, parts: list[Tensor]) -> Tensor:
    values = iter(parts)
    return _gather(groups, n, lambda _: next(values))


def ablate(model, groups, n: int, heads: list[tuple[int, int]], means: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(LD, first-token error indicator) per corrupt prompt with `heads` mean-ablated
    together: each head's z set to its mean over the clean prompts of the same length
    (means[i]: mean_head_outputs of group i's clean prompts)."""
    per_group = iter(means)

    def run(batch: PairBatch) -> Tensor:
        hooks = mean_ablation_hooks(heads, next(per_group))
        logits = final_logits(model, batch.corrupt, hooks).cpu()
        rows = torch.arange(len(logits))
        ld = logits[rows, batch.error_ids] - logits[rows, batch.correct_ids]
        return torch.stack([ld, (logits.argmax(-1) == batch.error_ids).float()], dim=-1)

    out = _gather(groups, n, run)
    return out[:, 0], out[:, 1]


def _normalised(values: Tensor, m: Measured, gap: float) -> Tensor:
    shape = (-1,) + (1,) * (values.dim() - 1)
    return (values - m.ld_corrupt.reshape(shape)) / gap


def confirm_heads(model, params: Params, groups, n: int, m: Measured, gap: float) -> list[HeadEffect]:
    """The heads attribution patching ranks highest (by |effect|), patched exactly; every
    head, in that order, with `exhaustive_heads`."""
    settings, stats = params.patching, params.stats
    attribution = (m.head_attribution / gap).mean(0)
    count = attribution.numel() if settings.exhaustive_heads else settings.top_heads
    order = attribution.flatten().abs().argsort(descending=True)[:count]
    heads = [divmod(int(i), model.cfg.n_heads) for i in order]
    exact = _normalised(_gather(groups, n, lambda b: compute_component_patching(model, b, heads)), m, gap)
    return [HeadEffect(layer=l, head=h, attribution=attribution[l, h].item(),
                       exact=estimate_mean(exact[:, i].double(), stats.bootstrap_resamples, params.seed, stats.ci_level))
            for i, (l, h) in enumerate(heads)]


def ablation_result(model, params: Params, groups, n: int, m: Measured, top: list[HeadEffect]) -> Ablation | None:
    settings, stats = params.patching, params.stats
    chosen = [(h.layer, h.head) for h in top if h.exact.mean >= settings.ablate_threshold]
    if not chosen:
        return None
    means = [mean_head_outputs(model, batch.clean) for _, batch in groups]
    ld, err = ablate(model, groups, n, chosen, means)
    draws = random_head_sets(model.cfg.n_layers, model.cfg.n_heads, len(chosen), settings.random_draws, params.seed)
    random = [(ablate(model, groups, n, heads, means)[0] - m.ld_corrupt).mean().item() for heads in draws]
    delta = (ld - m.ld_corrupt).mean().item()

    def est(values: Tensor) -> Estimate:
        return estimate_mean(values.double(), stats.bootstrap_resamples, params.seed, stats.ci_level)

    corrupt_err = _gather(groups, n, lambda b: (final_logits(model, b.corrupt).cpu().argmax(-1) == b.error_ids).float())
    return Ablation(heads=[list(h) for h in chosen], delta_logit_diff=est(ld - m.ld_corrupt),
                    delta_error_rate=est(err - corrupt_err), random_delta_logit_diff=random,
                    p_value=(1 + sum(r <= delta for r in random)) / (1 + len(random)))


SETS = {
    "copy": "every example answers the error; clean examples answer other numbers",
    "sequence": "the examples' answers step towards the error (1, 3 -> 5); clean ones do not",
}


def error_set(name: str, params: Params) -> list[PromptPair]:
    s = params.patching
    if name == "copy":
        return copy_pairs(s.n_pairs, s.n_shots, s.max_operand, s.seed)
    return sequence_pairs(s.n_pairs, s.max_operand, s.seed)


def analyse_set(model, params: Params, name: str) -> tuple[SetResult, dict[str, Tensor]]:
    """Behaviour on every pair of the set; patching and ablation on a subset (patched_subset)."""
    all_pairs, all_prepared = prepare_pairs(model, error_set(name, params))
    behaviour, lds, errs = behaviour_of(model, params, all_pairs, all_prepared)
    chosen, patched_on = patched_subset(errs, params.patching.n_patched)
    pairs, prepared = [all_pairs[i] for i in chosen], [all_prepared[i] for i in chosen]
    n, groups = len(pairs), batches(prepared)
    m = measure(model, groups, n, params.patching.last_positions, lds["corrupt"][chosen], lds["clean"][chosen])
    gap = (m.ld_clean - m.ld_corrupt).mean().item()
    top = confirm_heads(model, params, groups, n, m, gap)
    mlp = _normalised(m.mlp, m, gap)
    stats = params.stats
    first, first_clean = prepared[0]
    sites = ["changed", *(f"{-k}" for k in range(params.patching.last_positions, 0, -1))]
    changed = (first.tokens != first_clean.tokens).nonzero()[:, 0].tolist()
    result = SetResult(
        name=name, description=SETS[name], n_pairs=len(all_pairs), n_dropped=params.patching.n_pairs - len(all_pairs),
        n_patched=n, patched_on=patched_on,
        examples=[[p.corrupt.text, p.clean.text, str(p.error), str(p.correct)] for p in pairs[:3]],
        corrupt=behaviour["corrupt"], clean=behaviour["clean"],
        mean_gap=gap, sites=sites,
        site_tokens=["+".join(first.str_tokens[i] for i in changed)] + list(first.str_tokens[-len(sites) + 1:]),
        resid_exact=_normalised(m.resid, m, gap).mean(0).tolist(),
        resid_attribution=(m.resid_attribution / gap).mean(0).tolist(),
        mlp_exact=[estimate_mean(mlp[:, l].double(), stats.bootstrap_resamples, params.seed, stats.ci_level)
                   for l in range(model.cfg.n_layers)],
        mlp_attribution=(m.mlp_attribution / gap).mean(0).tolist(),
        head_attribution=(m.head_attribution / gap).mean(0).tolist(), top_heads=top,
        rank_agreement_heads=spearman(torch.tensor([h.attribution for h in top]), torch.tensor([h.exact.mean for h in top])),
        rank_agreement_mlp=spearman((m.mlp_attribution / gap).mean(0), mlp.mean(0)),
        ablation=ablation_result(model, params, groups, n, m, top),
    )
    tensors = {f"{name}/ld_corrupt": m.ld_corrupt, f"{name}/ld_clean": m.ld_clean, f"{name}/resid": m.resid,
               f"{name}/mlp": m.mlp, f"{name}/head_attribution": m.head_attribution}
    return result, tensors


def examples_result(model, params: Params) -> ExamplesResult:
    """The study's comparison: the canonical query after its examples and alone."""
    answers = params.prompt.answers.model_dump()
    kinds = {"with_examples": params.prompt.canonical, "without_examples": params.prompt.control}
    p, greedy = {}, {}
    for kind, text in kinds.items():
        prepared = prepare_prompt(model, text, answers)
        scores, read, _ = score_and_read(model, [prepared.tokens] * 2,
                                         [prepared.answers[n].token_ids for n in answers], max_tokens=3)
        p[kind] = dict(zip(answers, scores.logprob.exp().tolist(), strict=True))
        greedy[kind] = read[0]
    return ExamplesResult(with_examples=kinds["with_examples"], without_examples=kinds["without_examples"],
                          p=p, greedy=greedy)


def run(model, params: Params, key: str, paths: StagePaths) -> PatchingMetrics:
    results, tensors = {}, {}
    for name in SETS:
        results[name], set_tensors = analyse_set(model, params, name)
        tensors.update(set_tensors)
    metrics = PatchingMetrics(model=key, n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
                              ci_level=params.stats.ci_level, ablate_threshold=params.patching.ablate_threshold,
                              sets=results, examples=examples_result(model, params))
    save_tensors(paths.tensors, tensors)
    save_json(paths.metrics, metrics)
    return metrics


# --- figures ---------------------------------------------------------------------------

def _set_axes(metrics: PatchingMetrics, height: float, cols: int = 1):
    from matplotlib.figure import Figure

    names = list(metrics.sets)
    fig = Figure(figsize=(6.8, height * len(names)), layout="constrained")
    return fig, fig.subplots(len(names), cols, squeeze=False), names


@styled
def plot_behaviour(metrics: PatchingMetrics):
    """Figure 5: the error sets, corrupt against clean contexts: error rate and P(error)."""
    fig, axes, names = _set_axes(metrics, 2.1, cols=2)
    for row, name in enumerate(names):
        result = metrics.sets[name]
        for col, (field, label) in enumerate((("error_rate", "greedy answer = error"), ("p_error", "P(error), whole answer"))):
            ax = axes[row, col]
            values = [getattr(result.corrupt, field), getattr(result.clean, field)]
            ax.bar([0, 1], [v.mean for v in values], color=[COLORS["misconception"], COLORS["correct"]],
                   yerr=error_bars(values), capsize=3)
            ax.set_xticks([0, 1], ["corrupt context", "clean context"])
            ax.set_title(f"{name} set (n = {result.n_pairs}): {label}", fontsize=8)
    return fig


@styled
def plot_resid_patching(metrics: PatchingMetrics):
    """Residual-stream patching, layer x site: exact (left) and attribution (right)."""
    fig, axes, names = _set_axes(metrics, 2.8, cols=2)
    for row, name in enumerate(names):
        result = metrics.sets[name]
        labels = [f"{s}\n{t!r}"[:14] for s, t in zip(result.sites, result.site_tokens, strict=True)]
        for col, (values, title) in enumerate(((result.resid_exact, "patched"), (result.resid_attribution, "attribution"))):
            ax = axes[row, col]
            image = ax.imshow(torch.tensor(values).numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto",
                              interpolation="nearest")
            ax.set_xticks(range(len(labels)), labels, fontsize=6)
            ax.set_ylabel("layer")
            ax.set_title(f"{name} set: residual stream, {title}", fontsize=8)
            ax.grid(False)
        fig.colorbar(image, ax=list(axes[row]), shrink=0.8, label="normalised effect")
    return fig


@styled
def plot_components(metrics: PatchingMetrics):
    """MLP layers (exact with intervals, and attribution) and the top heads, at the final position."""
    fig, axes, names = _set_axes(metrics, 2.4, cols=2)
    for row, name in enumerate(names):
        result = metrics.sets[name]
        ax = axes[row, 0]
        layers = range(len(result.mlp_exact))
        ax.errorbar(layers, [e.mean for e in result.mlp_exact], capsize=2, fmt="o-", markersize=3,
                    yerr=error_bars(result.mlp_exact),
                    color=COLORS["accent"], label="patched")
        ax.plot(layers, result.mlp_attribution, "x--", color=COLORS["control"], label="attribution")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("layer")
        ax.set_title(f"{name} set: MLP outputs", fontsize=8)
        ax.legend(frameon=False, fontsize=7)
        ax = axes[row, 1]
        heads = result.top_heads
        x = range(len(heads))
        ax.bar(x, [h.exact.mean for h in heads], color=COLORS["accent"], capsize=2, label="patched",
               yerr=error_bars([h.exact for h in heads]))
        ax.scatter(x, [h.attribution for h in heads], marker="x", color="black", zorder=3, label="attribution")
        ax.set_xticks(list(x), [f"L{h.layer}H{h.head}" for h in heads], rotation=90, fontsize=6)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"{name} set: top heads by attribution", fontsize=8)
    return fig


@styled
def plot_ablation(metrics: PatchingMetrics):
    """Figure 4: mean-ablating the heads patching found, against random heads of the same number."""
    fig, axes, names = _set_axes(metrics, 2.0)
    for row, name in enumerate(names):
        ax, ablation = axes[row, 0], metrics.sets[name].ablation
        if ablation is None:
            ax.set_axis_off()
            ax.set_title(f"{name} set: no head passes the threshold", fontsize=8)
            continue
        ax.hist(ablation.random_delta_logit_diff, bins=12, color=COLORS["control"], label="random heads")
        d = ablation.delta_logit_diff
        ax.axvline(d.mean, color=COLORS["misconception"], label="found heads")
        ax.axvspan(d.low, d.high, color=COLORS["misconception"], alpha=0.2)
        ax.set_xlabel("change in logit(error) − logit(correct)")
        ax.set_title(f"{name} set: {len(ablation.heads)} heads mean-ablated (p = {ablation.p_value:.2f})", fontsize=8)
        ax.legend(frameon=False, fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, argv)


if __name__ == "__main__":
    main()
