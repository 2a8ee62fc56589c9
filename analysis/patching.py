"""The model's own errors, explained causally: error sets, activation and attribution
patching, ablations against random controls, wrong against right answers, and the
circuit from path patching (the study's Figures 4, 5 and 10, measured).

DVC stage `patching@<model>`. Reads params.yaml [seed, models.<model>, prompt, stats,
patching]; writes data/<model>/patching.safetensors and data/<model>/patching.json.

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
The reverse (noising) puts the corrupt activation into the clean run, normalised so that 0
is the clean run and 1 the corrupt one: denoising asks what suffices to restore the right
answer, noising what the error needs.
Intervals: percentile bootstrap over pairs (each pair has its own context); the set's
mean gap is held fixed. Patched sites:
- the residual stream before each layer, at the positions where the two prompts differ
  (together) and at each of the last positions (`start_at_layer`: only layers >= L run);
- every MLP layer's output and every head's output (`hook_z`) at the final position.
A change at the last positions only never reaches earlier ones (attention is causal), so
those patches run only the last positions, on the keys and values of the rest (prefix_kv).
Attribution patching estimates all of these from one forward and backward pass per run
(gradient of LD times the clean-minus-corrupt activation); the heads it ranks highest
are then patched exactly, and the rank agreement of the two is reported.
Ablation: the heads whose exact effect passes `patching.ablate_threshold`, together by
zero, mean (at each position, their mean output there over the clean prompts of the same
length) and resample ablation (their output on another pair's clean prompt), and each
alone by mean ablation; the joint mean ablation against the same number of random heads
drawn `patching.random_draws` times. All changes are paired: ablated - corrupt per prompt,
with sign-flip p-values; the joint ablations also as the whole-answer error rate (greedy
answer, heads ablated at every position of the context).
Wrong against right: over every pair's corrupt prompt, split by the greedy answer, the
logit lens's LD by layer and the top heads' attention to the changed tokens.
Circuit (only where the patched pairs show the error): nodes are the heads and MLPs whose
exact effect passes `patching.circuit_node_threshold`; path patching measures each
sender -> receiver edge and each node's direct effect on the logits (compute_path_patching).
Examples against none: the canonical query after its examples, alone, and after every
context of two doubles in the study's format (doubles_contexts).

    python -m analysis.patching --model smollm2-135m
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from jaxtyping import Bool, Float, Int
from pydantic import Field
from torch import Tensor

from analysis.arithmetic import PromptPair, copy_pairs, sequence_pairs
from analysis.artifacts import (Hook, Name, Schema, StagePaths, StageResults, load_json, load_tensors, save_json,
                                save_tensors)
from analysis.params import Params, hook_layer
from analysis.plotting import COLORS, error_bars, styled
from analysis.prompts import PreparedPrompt, equal_length_batches, prepare_prompt
from analysis.saes import STAGE as SAE_TRAIN
from analysis.saes import load_sae, splice
from analysis.scoring import greedy_under_hooks, prefix_kv, read_number, score_and_read, stack_kv
from analysis.stage import run_stage
from analysis.stats import Estimate, PairedEstimate, estimate_mean, paired_estimate
from analysis.timing import progress, timed

STAGE = "patching"
# What `dvc metrics show` lists for this stage (paths into the results, fnmatch patterns).
HEADLINE = ("examples.error_rate.mean", "examples.p_correct.mean", "sets.*.error_gap.mean", "sets.*.error_gap.p_value",
            "sets.*.ablation.joint.*.delta_error_rate.mean", "sets.*.ablation.joint.*.delta_logit_diff.mean",
            "sets.*.ablation.p_value", "sets.*.rank_agreement_*", "sets.*.cases.n_error")
ANSWERS = ("error", "correct")
ERRING = "pairs where the model gives the error"


# --- compute ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PairBatch:
    """Equal-length corrupt and clean prompts, with the answers' first tokens."""

    corrupt: Int[Tensor, "batch pos"]
    clean: Int[Tensor, "batch pos"]
    error_ids: Int[Tensor, "batch"]
    correct_ids: Int[Tensor, "batch"]

    _resid: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def changed(self) -> Bool[Tensor, "batch pos"]:
        return self.corrupt != self.clean

    @torch.no_grad()
    def resid_pre(self, model, layer: int) -> Float[Tensor, "batch pos d_model"]:
        """The corrupt run's residual stream entering `layer` (every layer cached at first use),
        so that an intervention at layer L runs only layers L.. again."""
        if not self._resid:
            names = _resid_names(model)
            _, cache = model.run_with_cache(self.corrupt.to(model.cfg.device), names_filter=lambda n: n in names,
                                            stop_at_layer=model.cfg.n_layers)
            self._resid.update((l, cache[name]) for l, name in enumerate(names))
        return self._resid[layer]


def logit_diff_at_end(model, batch: PairBatch, resid: Tensor | None = None, start: int = 0,
                      hooks: list | None = None, prefix=None) -> Float[Tensor, "batch"]:
    """LD at the final position of the corrupt prompts, or of the residual stream `resid`
    entering block `start` (only blocks start.. run). `resid` may hold several copies of
    the batch, one after another: their LDs come back in the same order. With `prefix`
    (prefix_kv), `resid` holds only the last positions and attends to the cached ones."""
    inputs = batch.corrupt.to(model.cfg.device) if resid is None else resid
    with model.hooks(fwd_hooks=hooks or []):
        out = model(inputs, start_at_layer=None if resid is None else start, stop_at_layer=model.cfg.n_layers,
                    past_kv_cache=prefix)
    return _ld_of_final(model, batch, out[:, -1])


def _ld_of_final(model, batch: PairBatch, last: Float[Tensor, "copies_batch d_model"]) -> Float[Tensor, "copies_batch"]:
    """LD from the final residual stream at the last position (final norm, then unembedding);
    `last` may hold several copies of the batch, one after another."""
    logits = _logits_of_final(model, last)
    copies, rows = len(logits) // len(batch.error_ids), torch.arange(len(logits))
    return logits[rows, batch.error_ids.repeat(copies)] - logits[rows, batch.correct_ids.repeat(copies)]


def _logits_of_final(model, last: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows vocab"]:
    last = last[:, None]
    return model.unembed(model.ln_final(last) if model.cfg.normalization_type else last)[:, 0].cpu()


def _resid_names(model) -> list[str]:
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def compute_resid_patching(model, batch: PairBatch, sites: list[Bool[Tensor, "batch pos"]]
                           ) -> Float[Tensor, "direction batch layer site"]:
    """LD with the residual stream before each layer patched at each site's positions, both
    ways: [0] the clean stream into the corrupt run (denoising), [1] the corrupt stream into
    the clean run (noising). Each layer runs from there on, with both directions and all
    sites in one batch; sites within the last half of the prompt run only from their first
    position on (prefix_kv), the others whole."""
    names = _resid_names(model)
    _, clean = model.run_with_cache(batch.clean.to(model.cfg.device), names_filter=lambda n: n in names)
    _, corrupt = model.run_with_cache(batch.corrupt.to(model.cfg.device), names_filter=lambda n: n in names)
    pos = batch.corrupt.shape[1]
    spans = [pos - int(m.any(0).nonzero()[0]) if m.any() else 1 for m in sites]  # the first touched position on
    out = torch.empty(2, len(batch.corrupt), model.cfg.n_layers, len(sites))
    for late in (True, False):
        chosen = [i for i, span in enumerate(spans) if (span <= pos // 2) == late]
        if not chosen:
            continue
        span = max(spans[i] for i in chosen) if late else pos
        masks = torch.cat([sites[i][:, -span:] for i in chosen] * 2).to(model.cfg.device)[..., None]
        prefix = None
        if span < pos:
            prefixes = [prefix_kv(model, tokens, span) for tokens in (batch.corrupt, batch.clean)]
            prefix = stack_kv([prefixes[0]] * len(chosen) + [prefixes[1]] * len(chosen))
        for layer, name in progress(list(enumerate(names)), "patching the residual stream", unit="layer"):
            c, k = clean[name][:, -span:], corrupt[name][:, -span:]
            base, patch = torch.cat([k] * len(chosen) + [c] * len(chosen)), torch.cat([c] * len(chosen) + [k] * len(chosen))
            ld = logit_diff_at_end(model, batch, torch.where(masks, patch, base), layer, prefix=prefix)
            out[:, :, layer, chosen] = ld.reshape(2, len(chosen), -1).transpose(1, 2)
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
                               ) -> Float[Tensor, "direction batch component"]:
    """LD with one component's final-position output patched, both ways: [0] its clean
    output into the corrupt run, [1] its corrupt output into the clean run. (layer, None)
    is that layer's MLP, (layer, head) one head's z. Each run starts at the component's
    layer, from the residual stream cached there, and runs the final position only, on the
    keys and values of the rest (prefix_kv)."""
    names = {_component_name(layer, head) for layer, head in components}
    names |= {f"blocks.{layer}.hook_resid_pre" for layer, _ in components}
    _, clean = model.run_with_cache(batch.clean.to(model.cfg.device), names_filter=lambda n: n in names)
    _, corrupt = model.run_with_cache(batch.corrupt.to(model.cfg.device), names_filter=lambda n: n in names)
    prefix = stack_kv([prefix_kv(model, tokens, 1) for tokens in (batch.corrupt, batch.clean)])
    out = torch.empty(2, len(batch.corrupt), len(components))
    for i, (layer, head) in progress(list(enumerate(components)), "patching components", unit="component"):
        name, start = _component_name(layer, head), f"blocks.{layer}.hook_resid_pre"

        def final(cache) -> Tensor:
            return cache[name][:, -1] if head is None else cache[name][:, -1, head]

        resid = torch.cat([corrupt[start][:, -1:], clean[start][:, -1:]])
        hooks = _final_position_patch(name, torch.cat([final(clean), final(corrupt)]), head)
        out[:, :, i] = logit_diff_at_end(model, batch, resid, layer, hooks=hooks, prefix=prefix).reshape(2, -1)
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


Node = tuple[int, int | None]  # (layer, head), or (layer, None) for that layer's MLP


def node_name(node: Node) -> str:
    layer, head = node
    return f"MLP{layer}" if head is None else f"L{layer}H{head}"


def can_reach(sender: Node, receiver: Node) -> bool:
    """The sender writes to the residual stream before the receiver reads it: a head reads
    hook_resid_pre and writes into hook_resid_mid of its layer, an MLP reads hook_resid_mid
    and writes into the next layer's hook_resid_pre."""
    write = 2 * sender[0] + (1 if sender[1] is not None else 2)
    read = 2 * receiver[0] + (0 if receiver[1] is not None else 1)
    return write <= read


def node_outputs(model, cache, nodes: list[Node]) -> Float[Tensor, "node batch d_model"]:
    """What each node adds to the residual stream at the final position (a head: z @ W_O),
    from a cache holding each node's hook_z or hook_mlp_out."""
    out = []
    for layer, head in nodes:
        act = cache[_component_name(layer, head)][:, -1]
        out.append(act if head is None else act[:, head] @ model.W_O[layer, head])
    return torch.stack(out)


@torch.no_grad()
def _receiver_input(model, start: Tensor, receiver: Node, delta: Tensor, prefix) -> Tensor:
    """The receiver's final-position output when `delta` (copies*batch, d_model) is added to
    what it reads at the final position, and to nothing else; `start` is the final position's
    residual stream entering the receiver's layer, `prefix` the rest (prefix_kv)."""
    layer, head = receiver
    read = f"blocks.{layer}.hook_resid_pre" if head is not None else f"blocks.{layer}.hook_resid_mid"
    captured: dict[str, Tensor] = {}

    def add(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[:, -1] += delta
        return act

    def capture(act: Tensor, hook) -> None:
        captured["out"] = act[:, -1] if head is None else act[:, -1, head]

    with model.hooks(fwd_hooks=[(read, add), (_component_name(layer, head), capture)]):
        model(start, start_at_layer=layer, stop_at_layer=layer + 1, past_kv_cache=prefix)
    return captured["out"]


@torch.no_grad()
def compute_path_patching(model, batch: PairBatch, nodes: list[Node]
                          ) -> tuple[Float[Tensor, "batch node"], Float[Tensor, "batch sender receiver"]]:
    """Path patching at the final position, corrupt run, clean-minus-corrupt output of one
    node at a time. Direct: that difference added to the final residual stream only.
    Edge sender -> receiver: the receiver's output recomputed with only the sender's
    difference added to its input, then patched into the corrupt run from the receiver's
    layer on. NaN where the sender cannot reach the receiver. Returns LDs."""
    n_layers = model.cfg.n_layers
    outputs = {_component_name(layer, head) for layer, head in nodes}
    names = outputs | {f"blocks.{l}.hook_resid_pre" for l, _ in nodes} | {f"blocks.{n_layers - 1}.hook_resid_post"}
    _, clean = model.run_with_cache(batch.clean.to(model.cfg.device), names_filter=lambda n: n in outputs)
    _, corrupt = model.run_with_cache(batch.corrupt.to(model.cfg.device), names_filter=lambda n: n in names)
    delta = node_outputs(model, clean, nodes) - node_outputs(model, corrupt, nodes)
    final = corrupt[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1]
    direct = _ld_of_final(model, batch, (final[None] + delta).flatten(0, 1)).reshape(len(nodes), -1).T
    edges = torch.full((len(batch.corrupt), len(nodes), len(nodes)), float("nan"))
    base = prefix_kv(model, batch.corrupt, 1)
    for r, receiver in progress(list(enumerate(nodes)), "patching paths", unit="receiver"):
        senders = [s for s, sender in enumerate(nodes) if can_reach(sender, receiver)]
        if not senders:
            continue
        layer, head = receiver
        start = corrupt[f"blocks.{layer}.hook_resid_pre"][:, -1:].repeat(len(senders), 1, 1)
        prefix = stack_kv([base] * len(senders))
        value = _receiver_input(model, start, receiver, delta[senders].flatten(0, 1), prefix)
        hooks = _final_position_patch(_component_name(layer, head), value, head)
        ld = logit_diff_at_end(model, batch, start, layer, hooks=hooks, prefix=prefix)
        edges[:, senders, r] = ld.reshape(len(senders), -1).T
    return direct, edges


def replace_head_hooks(heads: list[tuple[int, int]], values: Float[Tensor, "layer head *batch pos d_head"]) -> list:
    """Hooks that set each listed head's z to values[layer, head] (broadcast over the batch
    when it has no batch dimension)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(layer: int):
        def hook(z: Tensor, hook) -> Tensor:
            z = z.clone()
            for head in by_layer[layer]:
                z[:, :, head] = values[layer, head].to(z.device)
            return z
        return hook
    return [(f"blocks.{layer}.attn.hook_z", make(layer)) for layer in by_layer]


@torch.no_grad()
def head_outputs(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head batch pos d_head"]:
    """Every head's z on the given equal-length prompts."""
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n.endswith("attn.hook_z"))
    return torch.stack([cache[f"blocks.{l}.attn.hook_z"].permute(2, 0, 1, 3) for l in range(model.cfg.n_layers)]).cpu()


def ablation_values(model, clean: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
    """What an ablated head's z becomes, per kind: zero; its mean at each position over the
    clean prompts; resample: its z on the clean prompt of another pair (the next one)."""
    z = head_outputs(model, clean)
    return {"zero": torch.zeros(*z.shape[:2], 1, 1), "mean": z.mean(2), "resample": z.roll(1, dims=2)}


@torch.no_grad()
def compute_cases(model, batch: PairBatch, heads: list[tuple[int, int]]
                  ) -> tuple[Float[Tensor, "batch layer"], Float[Tensor, "batch head"]]:
    """On the corrupt prompts: the logit lens's LD after each layer (final norm applied to
    that layer's residual stream), and each head's attention from the final position to
    the tokens where the corrupt and clean prompts differ."""
    n_layers = model.cfg.n_layers
    patterns = {f"blocks.{l}.attn.hook_pattern" for l, _ in heads}
    names = {f"blocks.{l}.hook_resid_post" for l in range(n_layers)} | patterns
    _, cache = model.run_with_cache(batch.corrupt.to(model.cfg.device), names_filter=lambda n: n in names)
    resid = torch.stack([cache[f"blocks.{l}.hook_resid_post"][:, -1] for l in range(n_layers)], dim=1)
    lens = _ld_of_final(model, batch, resid.transpose(0, 1).flatten(0, 1)).reshape(n_layers, -1).T
    changed = batch.changed.to(model.cfg.device).float()
    attention = [(cache[f"blocks.{l}.attn.hook_pattern"][:, h, -1] * changed).sum(-1).cpu() for l, h in heads]
    return lens, torch.stack(attention, dim=1) if heads else torch.zeros(len(batch.corrupt), 0)


def _sae_latents(model, sae, hook: str, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_1 latent"]:
    """The SAE's latents at `hook` from the second position on (the first is BOS, as in splice)."""
    captured: dict[str, Tensor] = {}

    def grab(x: Tensor, hook) -> None:
        captured["latents"] = sae.encode(x[:, 1:])

    model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(hook, grab)], stop_at_layer=hook_layer(hook) + 1)
    return captured["latents"]


def compute_latent_attribution(model, sae, hook: str, batch: PairBatch
                               ) -> tuple[Float[Tensor, "batch latent"], Float[Tensor, "batch latent"]]:
    """Attribution patching over every SAE latent (spliced in with its error term, so the
    corrupt run is unchanged): gradient of LD times clean-minus-corrupt latent, summed over
    positions; and each latent's mean activation on each corrupt prompt."""
    with torch.no_grad():
        clean = _sae_latents(model, sae, hook, batch.clean)
    kept: dict[str, Tensor] = {}

    def track(latents: Tensor) -> Tensor:
        kept["latents"] = latents.detach().requires_grad_(True)
        return kept["latents"]

    with torch.enable_grad():
        ld = logit_diff_at_end(model, batch, hooks=[(hook, splice(sae, edit=track))])
        (grad,) = torch.autograd.grad(ld.sum(), kept["latents"])
    corrupt = kept["latents"].detach()
    return ((clean - corrupt) * grad).sum(1).cpu(), corrupt.mean(1).cpu()


@torch.no_grad()
def edit_latents(model, sae, hook: str, batch: PairBatch, latents: list[int], to: str) -> Float[Tensor, "batch"]:
    """LD of the corrupt run with the listed latents set, at every position after the
    first, to zero (`to="zero"`) or to their values in the clean run (`to="clean"`); only
    the layers from the SAE's on run again."""
    index = torch.tensor(latents, dtype=torch.long, device=model.cfg.device)
    clean = _sae_latents(model, sae, hook, batch.clean) if to == "clean" else None

    def edit(z: Tensor) -> Tensor:
        z = z.clone()
        z[..., index] = 0 if clean is None else clean[..., index]
        return z

    layer = hook_layer(hook)
    return logit_diff_at_end(model, batch, batch.resid_pre(model, layer), layer, hooks=[(hook, splice(sae, edit=edit))])


def matched_latent_sets(mean_activation: Float[Tensor, "latent"], chosen: list[int], window: int, draws: int,
                        seed: int) -> list[list[int]]:
    """`draws` seeded random sets, one latent per chosen one, each drawn from the latents
    within `window` ranks of it by mean activation (never a chosen latent, nor a repeat)."""
    order = mean_activation.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(draws):
        picked: list[int] = []
        for latent in chosen:
            r = int(rank[latent])
            pool = [int(i) for i in order[max(0, r - window): r + window + 1] if int(i) not in chosen + picked]
            picked.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        sets.append(picked)
    return sets


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
    reverse: Estimate  # normalised: its corrupt output patched into the clean run (0 clean, 1 corrupt)


ABLATIONS = ("zero", "mean", "resample")


class Intervention(Schema):
    delta_logit_diff: PairedEstimate  # ablated - corrupt, paired on the same prompts
    error_rate: Estimate  # whole answer: the greedy answer, heads ablated at the context's positions, is the error
    delta_error_rate: PairedEstimate  # that, minus the unablated greedy answer's being the error


class Ablation(Schema):
    heads: list[list[int]]  # [layer, head]
    joint: dict[str, Intervention]  # all heads ablated together, per kind (ABLATIONS)
    alone: list[PairedEstimate]  # delta LD with each head mean-ablated alone, in `heads` order
    random_delta_logit_diff: list[float]  # mean ablation of each random draw of as many heads
    p_value: float  # share of random draws that lower LD at least as much (with the +1 correction)


NodeName = Annotated[str, Field(pattern=r"^(L\d{1,3}H\d{1,3}|MLP\d{1,3}|logits)$")]


class CircuitNode(Schema):
    name: NodeName
    layer: int
    head: int | None  # None: the layer's MLP
    effect: Estimate  # normalised exact patching effect, every path
    direct: Estimate  # normalised, through the final residual stream only


class CircuitEdge(Schema):
    sender: NodeName
    receiver: NodeName
    effect: Estimate  # normalised: only the receiver sees the sender's clean output


class Circuit(Schema):
    node_threshold: float
    max_nodes: int
    edge_threshold: float
    nodes: list[CircuitNode]  # in the order of the forward pass
    edges: list[CircuitEdge]  # every sender -> receiver pair the forward pass allows


class Cases(Schema):
    """The corrupt prompts of every pair, split by the model's greedy answer: the error,
    or the correct answer (other answers are in neither group)."""

    n_error: int
    n_right: int
    lens_error: list[Estimate]  # per layer: the logit lens's LD at the final position
    lens_right: list[Estimate]
    heads: list[NodeName]  # the heads ranked by attribution
    attention_error: list[Estimate]  # per head: attention from the final position to the changed tokens
    attention_right: list[Estimate]


class LatentEffect(Schema):
    """SAE latents on the error set: attribution over every latent, then the latents that
    most favour the error (patching them clean lowers LD the most) patched and ablated."""

    sae: Name
    hook: Hook
    n_latents: int
    top: list[int]  # by normalised attribution, largest first
    attribution: list[float]  # normalised (by the set's mean gap), per top latent
    mean_activation: list[float]  # on the corrupt prompts, per position, per top latent
    patched: Estimate  # normalised effect of setting the top latents to their clean values together
    ablated: PairedEstimate  # LD change when they are zero-ablated together (paired, ablated - corrupt)
    random_ablated: list[float]  # the same for random latents of matched mean activation, per draw
    p_value: float  # share of random draws that lower LD at least as much (with the +1 correction)


class Peak(Schema):
    """The largest mean effect of a residual-stream patching map, where it is, with its interval."""

    layer: int
    site: Annotated[str, Field(pattern=r"^(changed|-\d{1,3})$")]
    effect: Estimate  # normalised


class SetResult(Schema):
    name: Name
    description: str
    n_pairs: int
    n_dropped: int  # pairs whose two prompts tokenize to different lengths
    n_patched: int  # pairs on which patching and ablation run
    patched_on: Literal["pairs where the model gives the error", "the first pairs (too few errors to patch)"]
    examples: list[list[str]]  # [corrupt, clean, error, correct] for the first pairs
    corrupt: Behaviour
    clean: Behaviour
    error_gap: PairedEstimate  # error rate, corrupt minus clean context, paired by pair
    mean_gap: float  # mean(LD_clean - LD_corrupt): the normaliser
    sites: list[Annotated[str, Field(pattern=r"^(changed|-\d{1,3})$")]]  # "changed", then positions from the end
    site_tokens: list[str]  # the first pair's corrupt token at each site
    resid_exact: list[list[float]]  # (layer, site), normalised mean
    resid_reverse: list[list[float]]  # (layer, site), corrupt into clean: 0 is the clean run, 1 the corrupt one
    resid_peak: Peak  # of resid_exact
    resid_reverse_peak: Peak  # of resid_reverse
    resid_attribution: list[list[float]]
    mlp_exact: list[Estimate]  # per layer
    mlp_reverse: list[Estimate]  # per layer, corrupt into clean
    mlp_attribution: list[float]
    head_attribution: list[list[float]]  # (layer, head)
    top_heads: list[HeadEffect]
    rank_agreement_heads: float  # Spearman, attribution vs exact, over top_heads
    rank_agreement_mlp: float  # over every MLP layer
    ablation: Ablation | None  # None when no head passes the threshold
    circuit: Circuit | None  # None when the patched pairs do not show the error
    cases: Cases  # wrong against right answers, over every pair
    latents: list[LatentEffect]  # per SAE; empty when the patched pairs do not show the error


class ExamplesResult(Schema):
    """The canonical query with and without the study's examples, and after every context of
    two doubles examples like the study's (doubles_contexts)."""

    with_examples: str
    without_examples: str
    p: dict[str, dict[str, float]]  # prompt kind -> answer name -> whole-answer probability
    greedy: dict[str, int | None]
    n_contexts: int  # doubles contexts
    error_rate: Estimate  # over them: the greedy answer is the misconception
    p_misconception: Estimate  # whole-answer probabilities, mean over them
    p_correct: Estimate


class PatchingMetrics(StageResults):
    model: Name
    n_layers: int
    n_heads: int
    ci_level: float
    ablate_threshold: float
    sets: dict[str, SetResult]
    examples: ExamplesResult


def load_results(paths: StagePaths) -> PatchingMetrics:
    return load_json(paths.results, PatchingMetrics)


def curves(metrics: PatchingMetrics) -> dict[str, list[dict[str, float]]]:
    """The per-layer curve that dvc.yaml declares as a plot (StageSpec.plots)."""
    sets = metrics.sets
    columns = {f"{name}_{kind}": values for name in ("copy", "sequence")
               for kind, values in (("exact", [e.mean for e in sets[name].mlp_exact]),
                                    ("attribution", sets[name].mlp_attribution))}
    return {"layers": [{"layer": layer, **{c: v[layer] for c, v in columns.items()}}
                       for layer in range(metrics.n_layers)]}


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
               ) -> tuple[Behaviour, Tensor, Tensor, Tensor]:
    """The side's Behaviour; per pair its LD (a difference of first-token log-probabilities
    is one of logits), and whether the greedy answer is the error, and whether it is the
    correct one. One pass per context."""
    ids = [[p.answers[n].token_ids for p in side] for n in ANSWERS]
    scores, greedy, _ = score_and_read(model, [p.tokens for p in side] * 2, ids[0] + ids[1], max_tokens=3)
    p = scores.logprob.exp().reshape(2, len(side))
    ld = scores.first_logprob[: len(side)] - scores.first_logprob[len(side):]
    error = torch.tensor([g == pair.error for g, pair in zip(greedy[: len(side)], pairs, strict=True)]).double()
    wrong = torch.tensor([g != pair.correct for g, pair in zip(greedy[: len(side)], pairs, strict=True)]).double()

    def est(values: Tensor) -> Estimate:
        return estimate_mean(values.double(), params.stats.bootstrap_resamples, params.seed, params.stats.ci_level)

    return Behaviour(error_rate=est(error), wrong_rate=est(wrong), p_error=est(p[0]), p_correct=est(p[1]),
                     logit_diff=est(ld)), ld, error.bool(), ~wrong.bool()


def behaviour_of(model, params: Params, pairs: list[PromptPair], prepared: list[tuple[PreparedPrompt, PreparedPrompt]]
                 ) -> tuple[dict[str, Behaviour], PairedEstimate, dict[str, Tensor], Tensor, Tensor]:
    """Per side (corrupt, clean): its Behaviour and its LDs over every pair; the error rate
    corrupt minus clean, paired; and per pair whether the model gives the error after the
    corrupt context, and whether it is right."""
    results, lds, errs, rights = {}, {}, {}, {}
    for col, side in enumerate(("corrupt", "clean")):
        results[side], lds[side], errs[side], rights[side] = _behaviour(model, [p[col] for p in prepared], pairs, params)
    stats = params.stats
    gap = paired_estimate(errs["corrupt"].double() - errs["clean"].double(), stats.bootstrap_resamples, params.seed,
                          stats.ci_level)
    return results, gap, lds, errs["corrupt"], rights["corrupt"]


def patched_subset(errs: Tensor, n_patched: int) -> tuple[list[int], str]:
    """The pairs to patch: those on which the model makes the error (up to n_patched), when
    there are at least two; else the first n_patched pairs."""
    erring = errs.nonzero()[:, 0].tolist()
    if len(erring) >= 2:
        return erring[:n_patched], ERRING
    return list(range(min(n_patched, len(errs)))), "the first pairs (too few errors to patch)"


@dataclass(frozen=True)
class Measured:
    ld_corrupt: Float[Tensor, "pair"]
    ld_clean: Float[Tensor, "pair"]
    resid: Float[Tensor, "pair layer site"]
    resid_reverse: Float[Tensor, "pair layer site"]
    resid_attribution: Float[Tensor, "pair layer site"]
    mlp: Float[Tensor, "pair layer"]
    mlp_reverse: Float[Tensor, "pair layer"]
    mlp_attribution: Float[Tensor, "pair layer"]
    head_attribution: Float[Tensor, "pair layer head"]


def measure(model, groups: list[tuple[list[int], PairBatch]], n: int, n_last: int, ld_corrupt: Tensor,
            ld_clean: Tensor) -> Measured:
    """Exact patching of residual sites and MLPs (both ways), and attribution of all, given
    the pairs' LDs."""
    layers = range(model.cfg.n_layers)
    attrs = [compute_attribution(model, batch) for _, batch in groups]
    resid = _gather(groups, n, lambda b: compute_resid_patching(model, b, _sites(b, n_last)).transpose(0, 1))
    resid = resid.transpose(0, 1)
    mlp = _gather(groups, n, lambda b: compute_component_patching(model, b, [(l, None) for l in layers]).transpose(0, 1))
    mlp = mlp.transpose(0, 1)
    per_group = iter(attrs)

    def at_sites(batch: PairBatch) -> Tensor:
        attr = next(per_group)
        return torch.stack([(attr.resid * m[:, None, :]).sum(-1) for m in _sites(batch, n_last)], dim=-1)

    return Measured(
        ld_corrupt=ld_corrupt, ld_clean=ld_clean,
        resid=resid[0], resid_reverse=resid[1],
        resid_attribution=_gather(groups, n, at_sites),
        mlp=mlp[0], mlp_reverse=mlp[1],
        mlp_attribution=_gather_parts(groups, n, [a.mlp for a in attrs]),
        head_attribution=_gather_parts(groups, n, [a.heads for a in attrs]),
    )


def _gather_parts(groups: list[tuple[list[int], PairBatch]], n: int, parts: list[Tensor]) -> Tensor:
    values = iter(parts)
    return _gather(groups, n, lambda _: next(values))


def ablate(model, groups, n: int, heads: list[tuple[int, int]], values: list[Tensor]) -> Float[Tensor, "pair"]:
    """LD per corrupt prompt with `heads` ablated together: each head's z set to
    values[i][layer, head] in group i (see ablation_values). Only the layers from the
    first ablated head's on run again."""
    per_group = iter(values)
    start = min(layer for layer, _ in heads)

    def run(batch: PairBatch) -> Tensor:
        hooks = replace_head_hooks(heads, next(per_group))
        return logit_diff_at_end(model, batch, batch.resid_pre(model, start), start, hooks=hooks)

    return _gather(groups, n, run)


def ablated_answers(model, groups, n: int, heads: list[tuple[int, int]], values: list[Tensor]) -> list[int | None]:
    """The greedy answer per corrupt prompt with `heads` ablated as in `ablate`, at every
    position of the context (the answer's own tokens run unablated)."""
    per_group = iter(values)
    answers: list[int | None] = [None] * n
    for idx, batch in groups:
        texts = greedy_under_hooks(model, batch.corrupt, replace_head_hooks(heads, next(per_group)))
        for i, text in zip(idx, texts, strict=True):
            answers[i] = read_number(text)
    return answers


def _normalised(values: Tensor, m: Measured, gap: float) -> Tensor:
    shape = (-1,) + (1,) * (values.dim() - 1)
    return (values - m.ld_corrupt.reshape(shape)) / gap


def _normalised_reverse(values: Tensor, m: Measured, gap: float) -> Tensor:
    """Noising effects: 0 is the clean run, 1 the corrupt run (the same gap, other sign)."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    return (m.ld_clean.reshape(shape) - values) / gap


def confirm_heads(model, params: Params, groups, n: int, m: Measured, gap: float) -> list[HeadEffect]:
    """The heads attribution patching ranks highest (by |effect|), patched exactly; every
    head, in that order, with `exhaustive_heads`."""
    settings, stats = params.patching, params.stats
    attribution = (m.head_attribution / gap).mean(0)
    count = attribution.numel() if settings.exhaustive_heads else settings.top_heads
    order = attribution.flatten().abs().argsort(descending=True)[:count]
    heads = [divmod(int(i), model.cfg.n_heads) for i in order]
    both = _gather(groups, n, lambda b: compute_component_patching(model, b, heads).transpose(0, 1))
    exact, reverse = _normalised(both[:, 0], m, gap), _normalised_reverse(both[:, 1], m, gap)

    def est(values: Tensor) -> Estimate:
        return estimate_mean(values.double(), stats.bootstrap_resamples, params.seed, stats.ci_level)

    return [HeadEffect(layer=l, head=h, attribution=attribution[l, h].item(), exact=est(exact[:, i]),
                       reverse=est(reverse[:, i])) for i, (l, h) in enumerate(heads)]


def ablation_result(model, params: Params, groups, n: int, m: Measured, top: list[HeadEffect],
                    errors: list[int], erring: Tensor) -> Ablation | None:
    """The heads passing the threshold ablated together (zero, mean, resample) and each alone
    (mean); the joint mean ablation against random head sets of the same size. `errors`:
    each pair's error; `erring`: whether the unablated greedy answer is that error."""
    settings, stats = params.patching, params.stats
    chosen = [(h.layer, h.head) for h in top if h.exact.mean >= settings.ablate_threshold]
    if not chosen:
        return None
    values = [ablation_values(model, batch.clean) for _, batch in groups]

    def est(values: Tensor) -> PairedEstimate:
        return paired_estimate(values.double(), stats.bootstrap_resamples, params.seed, stats.ci_level)

    def delta(heads: list[tuple[int, int]], kind: str) -> Tensor:
        return ablate(model, groups, n, heads, [v[kind] for v in values]) - m.ld_corrupt

    def joint(kind: str) -> Intervention:
        answers = ablated_answers(model, groups, n, chosen, [v[kind] for v in values])
        is_error = torch.tensor([a == e for a, e in zip(answers, errors, strict=True)]).double()
        rate = estimate_mean(is_error, stats.bootstrap_resamples, params.seed, stats.ci_level)
        return Intervention(delta_logit_diff=est(delta(chosen, kind)), error_rate=rate,
                            delta_error_rate=est(is_error - erring.double()))

    joint = {kind: joint(kind) for kind in ABLATIONS}
    draws = random_head_sets(model.cfg.n_layers, model.cfg.n_heads, len(chosen), settings.random_draws, params.seed)
    random = [delta(heads, "mean").mean().item() for heads in draws]
    observed = joint["mean"].delta_logit_diff.mean
    return Ablation(heads=[list(h) for h in chosen], joint=joint,
                    alone=[est(delta([h], "mean")) for h in chosen], random_delta_logit_diff=random,
                    p_value=(1 + sum(r <= observed for r in random)) / (1 + len(random)))


def cases_result(model, params: Params, groups, errs: Tensor, rights: Tensor, top: list[HeadEffect]) -> Cases:
    """Figure 5's measurements: wrong (the error) against right answers."""
    stats, heads = params.stats, [(h.layer, h.head) for h in top]
    both = _gather(groups, len(errs), lambda b: torch.cat(compute_cases(model, b, heads), dim=1))
    lens, attention = both[:, : model.cfg.n_layers], both[:, model.cfg.n_layers:]

    def per_column(values: Tensor, rows: Tensor) -> list[Estimate]:
        if rows.sum() < 2:  # no interval from fewer than two prompts
            return [Estimate(mean=None, low=None, high=None, n=int(rows.sum())) for _ in range(values.shape[1])]
        return [estimate_mean(values[rows, c].double(), stats.bootstrap_resamples, params.seed, stats.ci_level)
                for c in range(values.shape[1])]

    return Cases(n_error=int(errs.sum()), n_right=int(rights.sum()), lens_error=per_column(lens, errs),
                 lens_right=per_column(lens, rights), heads=[node_name(h) for h in heads],
                 attention_error=per_column(attention, errs), attention_right=per_column(attention, rights))


def latent_result(model, params: Params, name: str, loaded: LoadedSae, groups, n: int, m: Measured,
                  gap: float) -> LatentEffect:
    """Attribution over all latents; the top `patching.top_latents` that favour the error
    patched clean and zero-ablated together, against random latents whose mean activation
    on the SAE's held-out corpus is of matched rank."""
    s, stats = params.patching, params.stats
    sae, hook = loaded.sae, loaded.hook
    both = _gather(groups, n, lambda b: torch.cat(compute_latent_attribution(model, sae, hook, b), dim=1))
    d_sae = both.shape[1] // 2
    attribution, activation = (both[:, :d_sae] / gap).mean(0), both[:, d_sae:].mean(0)
    top = attribution.argsort(descending=True)[: s.top_latents].tolist()

    def run(latents: list[int], to: str) -> Tensor:
        return _gather(groups, n, lambda b: edit_latents(model, sae, hook, b, latents, to)) - m.ld_corrupt

    def est(values: Tensor) -> Estimate:
        return estimate_mean(values.double(), stats.bootstrap_resamples, params.seed, stats.ci_level)

    ablated = run(top, "zero")
    draws = matched_latent_sets(loaded.corpus_activation, top, s.latent_match_window, s.random_draws, params.seed)
    random = [run(latents, "zero").mean().item() for latents in draws]
    return LatentEffect(sae=name, hook=hook, n_latents=d_sae, top=top, attribution=attribution[top].tolist(),
                        mean_activation=activation[top].tolist(), patched=est(run(top, "clean") / gap),
                        ablated=paired_estimate(ablated.double(), stats.bootstrap_resamples, params.seed, stats.ci_level),
                        random_ablated=random,
                        p_value=(1 + sum(r <= ablated.mean().item() for r in random)) / (1 + len(random)))


def circuit_nodes(params: Params, top: list[HeadEffect], mlp: list[Estimate]) -> list[tuple[Node, Estimate]]:
    """Components whose exact effect reaches `circuit_node_threshold` in size with an interval
    that excludes zero, at most `circuit_max_nodes` (the largest), in forward-pass order."""
    s = params.patching
    found = [((h.layer, h.head), h.exact) for h in top] + [((l, None), e) for l, e in enumerate(mlp)]
    found = [(node, e) for node, e in found if abs(e.mean) >= s.circuit_node_threshold and _excludes_zero(e)]
    found = sorted(found, key=lambda item: -abs(item[1].mean))[: s.circuit_max_nodes]
    return sorted(found, key=lambda item: (item[0][0], item[0][1] is None, item[0][1] or 0))


def circuit_result(model, params: Params, groups, n: int, m: Measured, gap: float,
                   nodes: list[tuple[Node, Estimate]]) -> Circuit:
    """Path patching between the circuit's nodes, and each node's direct effect on the logits."""
    stats, s = params.stats, params.patching
    keys = [node for node, _ in nodes]

    def both(batch: PairBatch) -> Tensor:  # (pair, node, 1 + node): direct, then edges
        direct, edges = compute_path_patching(model, batch, keys)
        return torch.cat([direct[..., None], edges], dim=-1)

    lds = _gather(groups, n, both)
    direct, edges = lds[..., 0], lds[..., 1:]

    def est(values: Tensor) -> Estimate:
        return estimate_mean(values.double(), stats.bootstrap_resamples, params.seed, stats.ci_level)

    direct, edges = _normalised(direct, m, gap), _normalised(edges, m, gap)
    return Circuit(
        node_threshold=s.circuit_node_threshold, max_nodes=s.circuit_max_nodes, edge_threshold=s.circuit_edge_threshold,
        nodes=[CircuitNode(name=node_name(node), layer=node[0], head=node[1], effect=effect, direct=est(direct[:, i]))
               for i, (node, effect) in enumerate(nodes)],
        edges=[CircuitEdge(sender=node_name(a), receiver=node_name(b), effect=est(edges[:, i, j]))
               for j, b in enumerate(keys) for i, a in enumerate(keys) if can_reach(a, b)])


SETS = {
    "copy": "every example answers the error; clean examples answer other numbers",
    "sequence": "the examples' answers step towards the error (1, 3 -> 5); clean ones do not",
}


def error_set(name: str, params: Params) -> list[PromptPair]:
    s = params.patching
    if name == "copy":
        return copy_pairs(s.n_pairs, s.n_shots, s.max_operand, s.seed)
    return sequence_pairs(s.n_pairs, s.max_operand, s.seed)


def _per_layer(values: Float[Tensor, "pair layer"], params: Params) -> list[Estimate]:
    stats = params.stats
    return [estimate_mean(values[:, l].double(), stats.bootstrap_resamples, params.seed, stats.ci_level)
            for l in range(values.shape[1])]


def _peak(values: Float[Tensor, "pair layer site"], sites: list[str], params: Params) -> Peak:
    stats = params.stats
    layer, site = divmod(int(values.mean(0).abs().argmax()), values.shape[2])
    effect = estimate_mean(values[:, layer, site].double(), stats.bootstrap_resamples, params.seed, stats.ci_level)
    return Peak(layer=layer, site=sites[site], effect=effect)


def analyse_set(model, params: Params, name: str, saes: dict[str, LoadedSae]) -> tuple[SetResult, dict[str, Tensor]]:
    """Behaviour on every pair of the set; patching and ablation on a subset (patched_subset)."""
    with timed(f"{name} set: behaviour"):
        all_pairs, all_prepared = prepare_pairs(model, error_set(name, params))
        behaviour, error_gap, lds, errs, rights = behaviour_of(model, params, all_pairs, all_prepared)
    chosen, patched_on = patched_subset(errs, params.patching.n_patched)
    pairs, prepared = [all_pairs[i] for i in chosen], [all_prepared[i] for i in chosen]
    n, groups = len(pairs), batches(prepared)
    with timed(f"{name} set: residual stream and MLP patching, both ways, and attribution"):
        m = measure(model, groups, n, params.patching.last_positions, lds["corrupt"][chosen], lds["clean"][chosen])
    gap = (m.ld_clean - m.ld_corrupt).mean().item()
    with timed(f"{name} set: heads patched exactly"):
        top = confirm_heads(model, params, groups, n, m, gap)
    mlp, mlp_reverse = _normalised(m.mlp, m, gap), _normalised_reverse(m.mlp_reverse, m, gap)
    mlp_exact = _per_layer(mlp, params)
    sites = ["changed", *(f"{-k}" for k in range(params.patching.last_positions, 0, -1))]
    resid, resid_reverse = _normalised(m.resid, m, gap), _normalised_reverse(m.resid_reverse, m, gap)
    erring, nodes = patched_on == ERRING, circuit_nodes(params, top, mlp_exact)
    with timed(f"{name} set: ablations and their random controls"):
        ablation = ablation_result(model, params, groups, n, m, top, [p.error for p in pairs], errs[chosen])
    with timed(f"{name} set: circuit (path patching)"):
        circuit = None if not erring or not nodes else circuit_result(model, params, groups, n, m, gap, nodes)
    with timed(f"{name} set: wrong against right answers"):
        cases = cases_result(model, params, batches(all_prepared), errs, rights, top)
    with timed(f"{name} set: SAE latents"):
        latents = [] if not erring else [latent_result(model, params, sae_name, sae, groups, n, m, gap)
                                         for sae_name, sae in saes.items()]
    first, first_clean = prepared[0]
    changed = (first.tokens != first_clean.tokens).nonzero()[:, 0].tolist()
    result = SetResult(
        name=name, description=SETS[name], n_pairs=len(all_pairs), n_dropped=params.patching.n_pairs - len(all_pairs),
        n_patched=n, patched_on=patched_on,
        examples=[[p.corrupt.text, p.clean.text, str(p.error), str(p.correct)] for p in pairs[:3]],
        corrupt=behaviour["corrupt"], clean=behaviour["clean"], error_gap=error_gap,
        mean_gap=gap, sites=sites,
        site_tokens=["+".join(first.str_tokens[i] for i in changed)] + list(first.str_tokens[-len(sites) + 1:]),
        resid_exact=resid.mean(0).tolist(), resid_reverse=resid_reverse.mean(0).tolist(),
        resid_peak=_peak(resid, sites, params), resid_reverse_peak=_peak(resid_reverse, sites, params),
        resid_attribution=(m.resid_attribution / gap).mean(0).tolist(),
        mlp_exact=mlp_exact, mlp_reverse=_per_layer(mlp_reverse, params),
        mlp_attribution=(m.mlp_attribution / gap).mean(0).tolist(),
        head_attribution=(m.head_attribution / gap).mean(0).tolist(), top_heads=top,
        rank_agreement_heads=spearman(torch.tensor([h.attribution for h in top]), torch.tensor([h.exact.mean for h in top])),
        rank_agreement_mlp=spearman((m.mlp_attribution / gap).mean(0), mlp.mean(0)),
        ablation=ablation, circuit=circuit, cases=cases, latents=latents,
    )
    tensors = {f"{name}/ld_corrupt": m.ld_corrupt, f"{name}/ld_clean": m.ld_clean, f"{name}/resid": m.resid,
               f"{name}/resid_reverse": m.resid_reverse, f"{name}/mlp": m.mlp, f"{name}/mlp_reverse": m.mlp_reverse,
               f"{name}/head_attribution": m.head_attribution}
    return result, tensors


def doubles_contexts(query: str, avoid: set[int]) -> list[str]:
    """The query after two solved doubles, `a + a = 2a. b + b = 2b.` (a != b, digits 0-9),
    as in the study's `1 + 1 = 2. 2 + 2 = 4.`, leaving out examples whose answer is in
    `avoid` (the answers scored, so that no example is a copy of one)."""
    digits = [a for a in range(10) if 2 * a not in avoid]
    return [f"{a} + {a} = {2 * a}. {b} + {b} = {2 * b}. {query}" for a in digits for b in digits if a != b]


def examples_result(model, params: Params) -> ExamplesResult:
    """The study's comparison: the canonical query after its examples and alone, and after
    each doubles context (doubles_contexts)."""
    answers = params.prompt.answers.model_dump()
    numbers = {name: int(text) for name, text in answers.items()}
    contexts = doubles_contexts(params.prompt.control, set(numbers.values()))
    texts = [params.prompt.canonical, params.prompt.control, *contexts]
    prepared = [prepare_prompt(model, text, answers) for text in texts]
    scores, read, _ = score_and_read(model, [q.tokens for q in prepared for _ in answers],
                                     [q.answers[n].token_ids for q in prepared for n in answers], max_tokens=3)
    p = scores.logprob.exp().reshape(len(texts), len(answers))
    read = read[:: len(answers)]
    kinds = ("with_examples", "without_examples")
    stats = params.stats

    def est(values: Tensor) -> Estimate:
        return estimate_mean(values.double(), stats.bootstrap_resamples, params.seed, stats.ci_level)

    column = {name: p[2:, i] for i, name in enumerate(answers)}
    return ExamplesResult(
        with_examples=texts[0], without_examples=texts[1],
        p={kind: dict(zip(answers, p[i].tolist(), strict=True)) for i, kind in enumerate(kinds)},
        greedy={kind: read[i] for i, kind in enumerate(kinds)},
        n_contexts=len(contexts),
        error_rate=est(torch.tensor([r == numbers["misconception"] for r in read[2:]])),
        p_misconception=est(column["misconception"]), p_correct=est(column["correct"]))


@dataclass(frozen=True)
class LoadedSae:
    sae: object  # a sae_lens SAE
    hook: str
    corpus_activation: Float[Tensor, "latent"]  # mean activation on sae_train's held-out corpus


def load_saes(model, params: Params, key: str, paths: StagePaths) -> dict[str, LoadedSae]:
    """The model's SAEs from params (trained ones from sae_train's output), with their stats."""
    trained = StagePaths(key, SAE_TRAIN, root=paths.root).dir
    out = {}
    for name, spec in params.model(key).saes.items():
        stats = load_tensors(trained / name / "stats.safetensors", {"mean_activation": (spec.d_sae,)})
        out[name] = LoadedSae(load_sae(key, name, spec, trained, device=model.cfg.device), spec.hook,
                              stats["mean_activation"])
    return out


def run(model, params: Params, key: str, paths: StagePaths) -> PatchingMetrics:
    results, tensors = {}, {}
    saes = load_saes(model, params, key, paths)
    for name in SETS:
        results[name], set_tensors = analyse_set(model, params, name, saes)
        tensors.update(set_tensors)
    metrics = PatchingMetrics(model=key, n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
                              ci_level=params.stats.ci_level, ablate_threshold=params.patching.ablate_threshold,
                              sets=results, examples=examples_result(model, params))
    save_tensors(paths.tensors, tensors)
    save_json(paths.results, metrics)
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


def _band(ax, estimates: list[Estimate], color: str, label: str) -> None:
    kept = [(i, e) for i, e in enumerate(estimates) if e.mean is not None]
    if not kept:
        return
    x = [i for i, _ in kept]
    ax.plot(x, [e.mean for _, e in kept], color=color, label=label)
    ax.fill_between(x, [e.low for _, e in kept], [e.high for _, e in kept], color=color, alpha=0.2)


@styled
def plot_cases(metrics: PatchingMetrics):
    """Figure 5: the corrupt prompts the model answers with the error against those it
    answers right: the logit lens's LD by layer, and the top heads' attention to the
    tokens where the corrupt context differs from the clean one."""
    fig, axes, names = _set_axes(metrics, 2.3, cols=2)
    for row, name in enumerate(names):
        cases = metrics.sets[name].cases
        groups = ((f"error (n = {cases.n_error})", COLORS["misconception"]), (f"right (n = {cases.n_right})", COLORS["correct"]))
        ax = axes[row, 0]
        for (label, color), lens in zip(groups, (cases.lens_error, cases.lens_right), strict=True):
            _band(ax, lens, color, label)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("layer")
        ax.set_ylabel("logit lens: LD")
        ax.set_title(f"{name} set: logit(error) − logit(correct) by layer", fontsize=8)
        ax.legend(frameon=False, fontsize=7)
        ax = axes[row, 1]
        x = torch.arange(len(cases.heads), dtype=torch.float)
        for offset, (label, color), attention in zip((-0.2, 0.2), groups, (cases.attention_error, cases.attention_right),
                                                     strict=True):
            kept = [(i, e) for i, e in enumerate(attention) if e.mean is not None]
            if kept:
                ax.bar([x[i].item() + offset for i, _ in kept], [e.mean for _, e in kept], 0.4, color=color,
                       yerr=error_bars([e for _, e in kept]), capsize=2, label=label)
        ax.set_xticks(x.tolist(), cases.heads, rotation=90, fontsize=6)
        ax.set_ylabel("attention")
        ax.set_title(f"{name} set: attention to the changed tokens", fontsize=8)
    return fig


@styled
def plot_resid_patching(metrics: PatchingMetrics):
    """Residual-stream patching, layer x site: clean into corrupt (exact and attribution),
    and corrupt into clean."""
    fig, axes, names = _set_axes(metrics, 2.8, cols=3)
    for row, name in enumerate(names):
        result = metrics.sets[name]
        labels = [f"{s}\n{t!r}"[:14] for s, t in zip(result.sites, result.site_tokens, strict=True)]
        panels = ((result.resid_exact, "clean → corrupt"), (result.resid_attribution, "attribution"),
                  (result.resid_reverse, "corrupt → clean"))
        for col, (values, title) in enumerate(panels):
            ax = axes[row, col]
            image = ax.imshow(torch.tensor(values).numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto",
                              interpolation="nearest")
            ax.set_xticks(range(len(labels)), labels, fontsize=6)
            ax.set_ylabel("layer")
            ax.set_title(f"{name} set: {title}", fontsize=8)
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
                    color=COLORS["accent"], label="clean → corrupt")
        ax.errorbar(layers, [e.mean for e in result.mlp_reverse], capsize=2, fmt="s:", markersize=2,
                    yerr=error_bars(result.mlp_reverse), color=COLORS["misconception"], label="corrupt → clean")
        ax.plot(layers, result.mlp_attribution, "x--", color=COLORS["control"], label="attribution")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("layer")
        ax.set_title(f"{name} set: MLP outputs", fontsize=8)
        ax.legend(frameon=False, fontsize=7)
        ax = axes[row, 1]
        heads = result.top_heads
        x = range(len(heads))
        ax.bar([i - 0.2 for i in x], [h.exact.mean for h in heads], 0.4, color=COLORS["accent"], capsize=2,
               label="clean → corrupt", yerr=error_bars([h.exact for h in heads]))
        ax.bar([i + 0.2 for i in x], [h.reverse.mean for h in heads], 0.4, color=COLORS["misconception"], capsize=2,
               label="corrupt → clean", yerr=error_bars([h.reverse for h in heads]))
        ax.scatter(x, [h.attribution for h in heads], marker="x", color="black", zorder=3, label="attribution")
        ax.set_xticks(list(x), [f"L{h.layer}H{h.head}" for h in heads], rotation=90, fontsize=6)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"{name} set: top heads by attribution", fontsize=8)
        ax.legend(frameon=False, fontsize=6)
    return fig


def _hbars(ax, labels: list[str], estimates: list[Estimate], colors: list[str]) -> None:
    y = range(len(labels))
    ax.errorbar([e.mean for e in estimates], y, xerr=error_bars(estimates), fmt="none", ecolor="black",
                elinewidth=0.8, capsize=2)
    ax.scatter([e.mean for e in estimates], y, c=colors, zorder=3, s=18)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.invert_yaxis()


@styled
def plot_ablation(metrics: PatchingMetrics):
    """Figure 4: ablating the heads patching found, each alone and together (zero, mean,
    resample), against the same number of random heads: change in LD and in the error rate."""
    fig, axes, names = _set_axes(metrics, 2.6, cols=2)
    for row, name in enumerate(names):
        ablation = metrics.sets[name].ablation
        if ablation is None:
            for ax in axes[row]:
                ax.set_axis_off()
            axes[row, 0].set_title(f"{name} set: no head passes the threshold", fontsize=8)
            continue
        k = len(ablation.heads)
        alone = [f"L{l}H{h} alone (mean)" for l, h in ablation.heads]
        joint = [f"all {k}: {kind}" for kind in ablation.joint]
        ax = axes[row, 0]
        _hbars(ax, alone + joint, ablation.alone + [i.delta_logit_diff for i in ablation.joint.values()],
               [COLORS["accent"]] * k + [COLORS["misconception"]] * len(joint))
        y = len(alone) + len(joint)
        ax.scatter(ablation.random_delta_logit_diff, [y] * len(ablation.random_delta_logit_diff), marker="|",
                   color=COLORS["control"], s=60)
        ax.set_yticks([*ax.get_yticks(), y], [*(t.get_text() for t in ax.get_yticklabels()), f"{k} random (mean)"],
                      fontsize=7)
        ax.set_ylim(y + 0.7, -0.7)
        ax.set_xlabel("change in logit(error) − logit(correct)")
        ax.set_title(f"{name} set (n = {metrics.sets[name].n_patched}; p = {ablation.p_value:.2f} against random heads)",
                     fontsize=8)
        ax = axes[row, 1]
        _hbars(ax, joint, [i.delta_error_rate.model_copy(update={f: 100 * getattr(i.delta_error_rate, f)
                                                                  for f in ("mean", "low", "high")})
                           for i in ablation.joint.values()], [COLORS["misconception"]] * len(joint))
        ax.set_xlabel("change in whole-answer error rate (points)")
    return fig


def _excludes_zero(e: Estimate) -> bool:
    return e.low > 0 or e.high < 0


def drawn_edges(circuit: Circuit) -> list[tuple[str, str, Estimate]]:
    """Edges of Figure 10: node to node and node to logits (direct effect) whose effect
    reaches the edge threshold in size with an interval that excludes zero."""
    edges = [(e.sender, e.receiver, e.effect) for e in circuit.edges]
    edges += [(node.name, "logits", node.direct) for node in circuit.nodes]
    return [(a, b, e) for a, b, e in edges if abs(e.mean) >= circuit.edge_threshold and _excludes_zero(e)]


ARC = 0.25  # curvature of the circuit's edges


def _arc_middle(ax, start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    """The middle of matplotlib's arc3 curve from start to end (it bends in display space)."""
    (x1, y1), (x2, y2) = ax.transData.transform([start, end])
    middle = ((x1 + x2) / 2 + ARC / 2 * (y2 - y1), (y1 + y2) / 2 - ARC / 2 * (x2 - x1))
    return tuple(ax.transData.inverted().transform(middle))


@styled
def plot_circuit(metrics: PatchingMetrics):
    """Figure 10: the circuit from measured effects. Nodes (forward-pass order, left to right)
    are the components whose patching effect passes the threshold, labelled with it; edges
    are path-patching effects, widths proportional to them. Red moves LD towards the
    error in the corrupt run (patching it clean moves LD towards the correct answer)."""
    from matplotlib.figure import Figure

    shown = {name: s.circuit for name, s in metrics.sets.items() if s.circuit is not None}
    fig = Figure(figsize=(6.8, 3.2 * max(1, len(shown))), layout="constrained")
    axes = fig.subplots(max(1, len(shown)), 1, squeeze=False)[:, 0]
    for ax, (name, circuit) in zip(axes, shown.items()):
        ax.set_axis_off()
        where = {node.name: (i, (i % 3 - 1) * 0.8) for i, node in enumerate(circuit.nodes)}
        where["logits"] = (len(circuit.nodes), 0.0)
        ax.set_xlim(-0.7, len(circuit.nodes) + 0.7)
        ax.set_ylim(-1.5, 1.5)
        edges = drawn_edges(circuit)
        widest = max([abs(e.mean) for _, _, e in edges], default=1.0)
        for a, b, e in edges:
            color = COLORS["misconception"] if e.mean > 0 else COLORS["correct"]
            ax.annotate("", xy=where[b], xytext=where[a], zorder=1, arrowprops=dict(
                arrowstyle="-|>", color=color, alpha=0.7, lw=0.5 + 4 * abs(e.mean) / widest,
                shrinkA=14, shrinkB=14, connectionstyle=f"arc3,rad={ARC}"))
            ax.text(*_arc_middle(ax, where[a], where[b]), f"{e.mean:.2f}", fontsize=6, ha="center", va="center",
                    color=color, bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))
        for node in circuit.nodes:
            color = COLORS["misconception"] if node.effect.mean > 0 else COLORS["correct"]
            ax.text(*where[node.name], f"{node.name}\n{node.effect.mean:.2f}", ha="center", va="center", fontsize=7,
                    bbox=dict(boxstyle="round", facecolor="white", edgecolor=color, linewidth=1.5), zorder=3)
        ax.text(*where["logits"], "logits", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", facecolor="#eeeeee", edgecolor="black"), zorder=3)
        ax.set_title(f"{name} set: nodes with |effect| ≥ {circuit.node_threshold:g}, "
                     f"edges with |effect| ≥ {circuit.edge_threshold:g}", fontsize=8)
    if not shown:
        axes[0].set_axis_off()
        axes[0].set_title("no set's patched pairs show the error: no circuit drawn", fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv, curves=curves)


if __name__ == "__main__":
    main()
