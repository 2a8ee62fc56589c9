"""Causal methods on prompt pairs, for any stage: whole-answer logit differences, activation
patching both ways, attribution patching, ablations and their random controls.

Pure functions of a model and a `PairBatch`; no I/O. A pair is a corrupt context (one
that should induce the error W) and a clean one of the same token length with the same
query; each pair carries W's and the correct answer C's tokens (after the tokens both
share, see analysis/prompts.py).

The metric is the whole-answer logit difference, LD = log P(W) - log P(C), where log P(A)
is the sum of A's tokens' log-probabilities under teacher forcing plus the log-probability
that the number ends after it (a first token alone would credit "1" for 10 with every
answer from 11 to 19). Every run therefore reads W and C after the context: two rows per
pair, W's first.

Interventions at the final position (patching one component's output, ablating heads or
SAE latents there) change nothing before it, since attention is causal: they run only the
final context position and the answer's tokens (the "tail"), from the intervened layer,
on the frozen keys and values of the rest of the context (scoring.prefix_kv). Whether the
greedy answer is W (or C) is read from the same teacher-forced tail: every token argmax
along it, then no digit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis import prefix_attention
from analysis.scoring import continues_number, prefix_kv, stack_kv
from analysis.timing import progress

Node = tuple[int, int | None]  # (layer, head), or (layer, None) for that layer's MLP
SIDES = ("corrupt", "clean")


@dataclass(frozen=True)
class PairBatch:
    """Equal-length corrupt and clean contexts, and each pair's answers: [:, 0] the error W,
    [:, 1] the correct C, each padded to `alen` tokens (by repeating its last token)."""

    corrupt: Int[Tensor, "batch pos"]
    clean: Int[Tensor, "batch pos"]
    answers: Int[Tensor, "batch 2 alen"]
    lengths: Int[Tensor, "batch 2"]

    @property
    def changed(self) -> Bool[Tensor, "batch pos"]:
        return self.corrupt != self.clean

    def context(self, side: str) -> Int[Tensor, "batch pos"]:
        return self.corrupt if side == "corrupt" else self.clean

    def tails(self) -> Int[Tensor, "rows tail"]:
        """[final context token, answer tokens], W's rows then C's: what a tail run feeds."""
        last = self.corrupt[:, -1:]  # the query's last token: the same on both sides
        return torch.cat([torch.cat([last, self.answers[:, a]], dim=1) for a in (0, 1)])

    def full(self, side: str) -> Int[Tensor, "rows full"]:
        """The context followed by each answer, W's rows then C's."""
        context = self.context(side)
        return torch.cat([torch.cat([context, self.answers[:, a]], dim=1) for a in (0, 1)])


def make_batch(corrupt: list[Tensor], clean: list[Tensor], answers: list[tuple[tuple[int, ...], tuple[int, ...]]]
               ) -> PairBatch:
    """A PairBatch from equal-length contexts and each pair's (W tokens, C tokens)."""
    alen = max(len(a) for pair in answers for a in pair)
    padded = [[list(a) + [a[-1]] * (alen - len(a)) for a in pair] for pair in answers]
    return PairBatch(torch.stack(corrupt), torch.stack(clean), torch.tensor(padded),
                     torch.tensor([[len(a) for a in pair] for pair in answers]))


@dataclass(frozen=True)
class Outcome:
    """Per pair (and per copy of the batch): LD, and whether the greedy answer is W or C."""

    ld: Float[Tensor, "copies batch"]
    error: Bool[Tensor, "copies batch"]
    correct: Bool[Tensor, "copies batch"]


def _read_steps(steps: Float[Tensor, "rows step vocab"], answers: Int[Tensor, "rows alen"], numbers: Int[Tensor, "k"],
                spend: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What an outcome needs from each step's logits (step j predicts answer token j): the
    log-normaliser, the answer token's logit, the number-continuing tokens' log-normaliser
    and the argmax. `spend`: `steps` may be overwritten (when no gradient is taken)."""
    picked = steps[:, : answers.shape[1]].gather(-1, answers[..., None])[..., 0]
    reads = (picked, steps[..., numbers].logsumexp(-1), steps.argmax(-1))
    if not spend or torch.is_grad_enabled():
        return steps.logsumexp(-1), *reads
    top = steps.amax(-1, keepdim=True)
    return steps.sub_(top).exp_().sum(-1).log_() + top[..., 0], *reads  # logsumexp, in place: no allocation


def _row_answers(batch: PairBatch, copies: int) -> Int[Tensor, "rows alen"]:
    n, alen = batch.answers.shape[0], batch.answers.shape[2]
    return batch.answers.transpose(0, 1).reshape(2 * n, alen).repeat(copies, 1)


def _outcome(reads: tuple[Tensor, Tensor, Tensor, Tensor], batch: PairBatch, continuing: Bool[Tensor, "vocab"]
             ) -> Outcome:
    norm, picked, number_norm, argmax = reads
    n, alen, device = batch.answers.shape[0], batch.answers.shape[2], norm.device
    copies = len(norm) // (2 * n)
    rows = torch.arange(len(norm), device=device)
    answers = _row_answers(batch, copies).to(device)
    lengths = batch.lengths.T.reshape(2 * n).repeat(copies).to(device)
    within = torch.arange(alen, device=device)[None] < lengths[:, None]
    ends = (number_norm[rows, lengths] - norm[rows, lengths]).exp().clamp(max=1 - 1e-12)  # P(a digit follows)
    logprob = ((picked - norm[:, :alen]) * within).sum(-1) + torch.log1p(-ends)
    follows = ((argmax[:, :alen] == answers) | ~within).all(-1) & ~continuing.to(device)[argmax[rows, lengths]]
    logprob, follows = logprob.reshape(copies, 2, n).cpu(), follows.reshape(copies, 2, n).cpu()
    return Outcome(ld=logprob[:, 0] - logprob[:, 1], error=follows[:, 0], correct=follows[:, 1])


def answer_outcome(logits: Float[Tensor, "rows tail vocab"], batch: PairBatch, continuing: Bool[Tensor, "vocab"],
                   offset: int = 0) -> Outcome:
    """From the logits of teacher-forced answers (rows: copies x [W rows, C rows]; the first
    `offset` positions of each row are context before the final position): log P(answer),
    ending there, and whether greedy decoding gives it. Returns LD = log P(W) - log P(C)."""
    alen = batch.answers.shape[2]
    steps = logits[:, offset: offset + alen + 1].float()
    answers = _row_answers(batch, len(logits) // (2 * len(batch.answers))).to(steps.device)
    return _outcome(_read_steps(steps, answers, continuing.to(steps.device).nonzero()[:, 0]), batch, continuing)


CHUNK = 256  # rows per unembedding: measured fastest among 16-256 on a 2-core Xeon


def resid_outcome(model, resid: Float[Tensor, "rows tail d_model"], batch: PairBatch, continuing: Bool[Tensor, "vocab"],
                  chunk: int | None = None) -> Outcome:
    """answer_outcome from the residual stream after the last block: the final norm and the
    unembedding run `chunk` rows at a time, so that no (rows, tail, vocab) tensor is ever
    held; on a CPU that allocation, not the product, cost most of an ablation's unembedding."""
    chunk = chunk or CHUNK
    answers = _row_answers(batch, len(resid) // (2 * len(batch.answers))).to(resid.device)
    numbers = continuing.to(resid.device).nonzero()[:, 0]
    cap = model.cfg.output_logits_soft_cap or 0
    parts = []
    for i in range(0, len(resid), chunk):
        x = model.ln_final(resid[i: i + chunk]) if model.cfg.normalization_type is not None else resid[i: i + chunk]
        logits = torch.addmm(model.b_U, x.flatten(0, 1), model.W_U).unflatten(0, x.shape[:2]).float()
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        parts.append(_read_steps(logits, answers[i: i + chunk], numbers, spend=True))
    return _outcome(tuple(torch.cat(p) for p in zip(*parts, strict=True)), batch, continuing)


def whole_outcome(model, resid: Float[Tensor, "rows full d_model"], batch: PairBatch, continuing: Bool[Tensor, "vocab"]
                  ) -> Outcome:
    """resid_outcome of whole runs (each row its context, then its answer; the stream after
    the last block): only the final context position and the answer's are unembedded."""
    pos, alen = batch.corrupt.shape[1], batch.answers.shape[2]
    return resid_outcome(model, resid[:, pos - 1: pos + alen], batch, continuing)


@dataclass
class Runs:
    """What every intervention on one batch reads: each side's frozen prefix (the context
    but its final token), its tail's residual stream entering every layer, its outcome,
    and the number-continuing tokens."""

    batch: PairBatch
    continuing: Bool[Tensor, "vocab"]
    prefix: dict = field(default_factory=dict)
    resid: dict = field(default_factory=dict)  # side -> (layer, rows, tail, d_model)
    base: dict = field(default_factory=dict)  # side -> Outcome

    @property
    def n(self) -> int:
        return len(self.batch.corrupt)


@torch.no_grad()
def prepare_runs(model, batch: PairBatch, continuing: Tensor | None = None) -> Runs:
    """Both sides' prefixes, tail residual streams and unpatched outcomes."""
    runs = Runs(batch, continues_number(model) if continuing is None else continuing)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
    tails = batch.tails().to(model.cfg.device)
    for side in SIDES:
        single = prefix_kv(model, batch.context(side), 1)
        runs.prefix[side] = stack_kv([single, single])
        resid, cache = model.run_with_cache(tails, past_kv_cache=runs.prefix[side], names_filter=lambda n: n in names,
                                            attention_mask=torch.ones_like(tails), stop_at_layer=model.cfg.n_layers)
        runs.resid[side] = torch.stack([cache[name] for name in names])
        runs.base[side] = resid_outcome(model, resid, batch, runs.continuing)
    return runs


def tail_resid(model, runs: Runs, sides: list[str], start: int, hooks: list | None = None, shared: bool = True
               ) -> Float[Tensor, "rows tail d_model"]:
    """Run the tails of len(sides) copies of the batch (copy i on side sides[i]) from layer
    `start` through the last block, with `hooks`. Copies on one side share their prefix
    (analysis/prefix_attention.py) instead of each taking a copy of it (`shared=False`:
    TransformerLens' own past_kv_cache, for comparison)."""
    stream = torch.cat([runs.resid[side][start] for side in sides])
    end = model.cfg.n_layers
    if shared and len(sides) > 1 and len(set(sides)) == 1 and prefix_attention.supported(model):
        with model.hooks(fwd_hooks=hooks or []), prefix_attention.shared_prefix(model, runs.prefix[sides[0]],
                                                                               len(sides), start):
            return model(stream, start_at_layer=start, stop_at_layer=end)
    prefix = stack_kv([runs.prefix[side] for side in sides]) if len(sides) > 1 else runs.prefix[sides[0]]
    with model.hooks(fwd_hooks=hooks or []):
        return model(stream, start_at_layer=start, stop_at_layer=end, past_kv_cache=prefix)


def tail_outcome(model, runs: Runs, sides: list[str], start: int, hooks: list | None = None, shared: bool = True
                 ) -> Outcome:
    """The outcome of tail_resid's run: one copy of the batch per side, in order."""
    return resid_outcome(model, tail_resid(model, runs, sides, start, hooks, shared), runs.batch, runs.continuing)


# --- activation patching: one component at the final position, both ways --------------------

def _component_hook(layer: int, head: int | None) -> str:
    return f"blocks.{layer}.{'hook_mlp_out' if head is None else 'attn.hook_z'}"


@torch.no_grad()
def final_outputs(model, runs: Runs, nodes: list[Node]) -> dict[str, dict[Node, Tensor]]:
    """Each node's output at the final position on each side (a head's z, an MLP's out)."""
    names = {_component_hook(*node) for node in nodes}
    out: dict[str, dict[Node, Tensor]] = {}
    for side in SIDES:
        _, cache = model.run_with_cache(runs.resid[side][0], start_at_layer=0, past_kv_cache=runs.prefix[side],
                                        names_filter=lambda n: n in names)
        out[side] = {node: cache[_component_hook(*node)][:, 0] if node[1] is None
                     else cache[_component_hook(*node)][:, 0, node[1]] for node in nodes}
    return out


@torch.no_grad()
def compute_component_patching(model, runs: Runs, nodes: list[Node]) -> Float[Tensor, "direction batch node"]:
    """LD with one node's final-position output patched: [0] its clean output into the
    corrupt run (denoising), [1] its corrupt output into the clean run (noising). The nodes
    of one layer run together, both directions in one batch, from that layer on."""
    outputs = final_outputs(model, runs, nodes)
    result = torch.empty(2, runs.n, len(nodes))
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _) in enumerate(nodes):
        by_layer.setdefault(layer, []).append(i)
    for layer, members in progress(sorted(by_layer.items()), "patching components", unit="layer"):
        sides = [side for _ in members for side in SIDES]  # node-major: (node, direction)

        def patch(act: Tensor, hook, members=members) -> Tensor:
            act = act.clone().unflatten(0, (len(members), 2, -1))
            for k, i in enumerate(members):
                node = nodes[i]
                if hook.name != _component_hook(*node):
                    continue
                for d, (into, source) in enumerate((("corrupt", "clean"), ("clean", "corrupt"))):
                    target = act[k, d, :, 0] if node[1] is None else act[k, d, :, 0, node[1]]
                    target[:] = outputs[source][node]
            return act.flatten(0, 2)

        hooks = [(name, patch) for name in {_component_hook(*nodes[i]) for i in members}]
        ld = tail_outcome(model, runs, sides, layer, hooks).ld.unflatten(0, (len(members), 2))
        for k, i in enumerate(members):
            result[:, :, i] = ld[k]
    return result


# --- the residual stream at chosen positions, both ways ---------------------------------------

@torch.no_grad()
def full_resid(model, batch: PairBatch) -> dict[str, Float[Tensor, "layer rows full d_model"]]:
    """Each side's residual stream entering every layer over the whole context and answer."""
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
    out = {}
    for side in SIDES:
        _, cache = model.run_with_cache(batch.full(side).to(model.cfg.device), names_filter=lambda n: n in names,
                                        stop_at_layer=model.cfg.n_layers)
        out[side] = torch.stack([cache[name] for name in names])
    return out


@torch.no_grad()
def compute_resid_patching(model, runs: Runs, sites: list[Bool[Tensor, "batch pos"]], layers: list[int] | None = None
                           ) -> Float[Tensor, "direction batch layer site"]:
    """LD with the residual stream before each of `layers` (default: all) patched at each
    site's context positions, both ways ([0] clean into the corrupt run, [1] corrupt into
    the clean run); every layer runs the whole context and answer from there, both
    directions and all sites in one batch."""
    batch, streams = runs.batch, full_resid(model, runs.batch)
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    pos = batch.corrupt.shape[1]
    masks = torch.cat([torch.cat([m, m]) for m in sites] * 2)  # (direction, site, answer, pair) rows
    masks = torch.nn.functional.pad(masks, (0, streams["corrupt"].shape[2] - pos))[..., None].to(model.cfg.device)
    out = torch.empty(2, runs.n, len(layers), len(sites))
    for column, layer in progress(list(enumerate(layers)), "patching the residual stream", unit="layer"):
        base = torch.cat([streams["corrupt"][layer]] * len(sites) + [streams["clean"][layer]] * len(sites))
        patch = torch.cat([streams["clean"][layer]] * len(sites) + [streams["corrupt"][layer]] * len(sites))
        resid = model(torch.where(masks, patch, base), start_at_layer=layer, stop_at_layer=model.cfg.n_layers)
        ld = whole_outcome(model, resid, batch, runs.continuing).ld
        out[:, :, column] = ld.unflatten(0, (2, len(sites))).transpose(1, 2)
    return out


# --- attribution patching -------------------------------------------------------------------

@dataclass(frozen=True)
class Attribution:
    """Gradient x (clean - corrupt) activation, per pair: first-order patching effects on LD."""

    resid: Float[Tensor, "batch layer pos"]  # every context position
    mlp: Float[Tensor, "batch layer"]  # final position
    heads: Float[Tensor, "batch layer head"]  # final position


def _attribution_names(name: str) -> bool:
    return name.endswith(("hook_resid_pre", "hook_mlp_out", "attn.hook_z"))


def compute_attribution(model, runs: Runs) -> Attribution:
    """One forward and backward pass over the corrupt context and both answers, one forward
    over the clean; activations at context positions are the same in W's and C's rows, so
    their gradients add."""
    batch, n, pos = runs.batch, runs.n, runs.batch.corrupt.shape[1]
    with torch.no_grad():
        _, clean = model.run_with_cache(batch.full("clean").to(model.cfg.device), names_filter=_attribution_names,
                                        stop_at_layer=model.cfg.n_layers)
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        act.retain_grad()
        acts[hook.name] = act

    def track(embed: Tensor, hook) -> Tensor:  # gradients flow from here, whatever the weights' flags
        return embed.detach().requires_grad_(True)

    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", track), *((k, keep) for k in clean.keys())]):
        resid = model(batch.full("corrupt").to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
        whole_outcome(model, resid, batch, runs.continuing).ld.sum().backward()

    def attr(name: str) -> Tensor:  # (batch, pos, ...) over the context: W's and C's rows added
        value = ((clean[name] - acts[name].detach()) * acts[name].grad).detach().cpu()[:, :pos]
        return value[:n] + value[n:]

    layers = range(model.cfg.n_layers)
    mlp = (torch.zeros(n, len(layers)) if model.cfg.attn_only else
           torch.stack([attr(f"blocks.{l}.hook_mlp_out")[:, -1].sum(-1) for l in layers], dim=1))
    return Attribution(resid=torch.stack([attr(f"blocks.{l}.hook_resid_pre").sum(-1) for l in layers], dim=1), mlp=mlp,
                       heads=torch.stack([attr(f"blocks.{l}.attn.hook_z")[:, -1].sum(-1) for l in layers], dim=1))


# --- ablations at the final position, and their random controls ----------------------------

@torch.no_grad()
def mean_head_outputs(model, runs: Runs) -> Float[Tensor, "layer head d_head"]:
    """Every head's z at the final position, averaged over the batch's clean contexts: what
    an ablated head outputs instead (mean ablation)."""
    nodes = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    clean = final_outputs(model, runs, nodes)["clean"]
    return torch.stack([torch.stack([clean[(l, h)].mean(0) for h in range(model.cfg.n_heads)])
                        for l in range(model.cfg.n_layers)])


@torch.no_grad()
def ablate_heads(model, runs: Runs, masks: Bool[Tensor, "copies layer head"], values: Float[Tensor, "layer head d_head"],
                 side: str = "corrupt", shared: bool = True) -> Outcome:
    """The outcome with each copy's heads (masks[c]) set to `values` at the final position:
    every copy of the batch in one run, from the first layer any copy ablates (`shared`: see
    tail_resid)."""
    masks = masks.to(model.cfg.device)
    start = int(masks.any(0).any(1).nonzero()[0])
    rows = 2 * runs.n

    def hook(z: Tensor, hook) -> Tensor:
        layer = int(hook.name.split(".")[1])
        mask = masks[:, layer].repeat_interleave(rows, 0)[:, :, None]  # (copies * rows, head, 1)
        z = z.clone()
        z[:, 0] = torch.where(mask, values[layer].to(z.device), z[:, 0])
        return z

    hooks = [(f"blocks.{l}.attn.hook_z", hook) for l in range(start, model.cfg.n_layers) if masks[:, l].any()]
    return tail_outcome(model, runs, [side] * len(masks), start, hooks, shared)


def head_mask(n_layers: int, n_heads: int, heads: list[tuple[int, int]]) -> Bool[Tensor, "layer head"]:
    mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask


def layer_matched_sets(chosen: list[tuple[int, int]], n_heads: int, draws: int, seed: int) -> list[list[tuple[int, int]]]:
    """`draws` seeded random head sets with as many heads in each layer as `chosen` has
    there, none of them chosen ones (drawn independently, so a set may repeat)."""
    generator = torch.Generator().manual_seed(seed)
    per_layer: dict[int, int] = {}
    for layer, _ in chosen:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    pools = {layer: [h for h in range(n_heads) if (layer, h) not in chosen] or list(range(n_heads))
             for layer in per_layer}
    sets = []
    for _ in range(draws):
        picked = []
        for layer, count in sorted(per_layer.items()):
            pool = pools[layer]
            order = torch.randperm(len(pool), generator=generator)[: min(count, len(pool))]
            picked += [(layer, pool[int(i)]) for i in order]
        sets.append(sorted(picked))
    return sets


def copies_per_run(runs: Runs, rows: int) -> int:
    """How many copies of the batch make about `rows` rows (two per pair) in one run."""
    return max(1, rows // (2 * runs.n))


def controlled_ablation(model, runs: list[Runs], chosen: list[tuple[int, int]], values: list[Tensor],
                        draws: int, seed: int, rows: int = 640) -> tuple[Outcome, Outcome]:
    """The chosen heads ablated at the final position, and `draws` layer-matched random
    sets ablated the same way, on every batch (about `rows` rows per run); each outcome's
    rows are the pairs of all the batches in order (the random draws as copies)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    masks = torch.stack([head_mask(n_layers, n_heads, s) for s in layer_matched_sets(chosen, n_heads, draws, seed)])
    observed = [ablate_heads(model, r, head_mask(n_layers, n_heads, chosen)[None], v) for r, v in zip(runs, values, strict=True)]
    random = []
    for r, v in zip(runs, values, strict=True):
        per = copies_per_run(r, rows)
        random.append(joined([ablate_heads(model, r, masks[i: i + per], v)
                              for i in progress(range(0, draws, per), "random head sets", unit="run")], 0))
    return joined(observed, 1), joined(random, 1)


def joined(parts: list[Outcome], dim: int) -> Outcome:
    """Outcomes put together along copies (dim 0) or pairs (dim 1)."""
    return Outcome(*(torch.cat([getattr(p, f) for p in parts], dim=dim) for f in ("ld", "error", "correct")))


# --- SAE latents at the final position ---------------------------------------------------------

@torch.no_grad()
def final_latents(model, runs: Runs, sae, hook: str, side: str = "corrupt") -> Float[Tensor, "batch latent"]:
    """The SAE's latents at the final position on one side."""
    captured: dict[str, Tensor] = {}

    def grab(x: Tensor, hook) -> None:
        captured["z"] = sae.encode(x[: runs.n, 0])

    from analysis.params import hook_layer

    model.run_with_hooks(runs.resid[side][0], start_at_layer=0, past_kv_cache=runs.prefix[side],
                         fwd_hooks=[(hook, grab)], stop_at_layer=hook_layer(hook) + 1)
    return captured["z"]


def latent_attribution(model, runs: Runs, sae, hook: str) -> Float[Tensor, "batch latent"]:
    """Attribution patching over every SAE latent at the final position: gradient of LD
    times clean-minus-corrupt latent (the SAE spliced in with its error term, so the
    corrupt run is unchanged). Negative: the corrupt value pushes towards the error."""

    clean = final_latents(model, runs, sae, hook, side="clean")
    kept: dict[str, Tensor] = {}

    def splice(x: Tensor, hook) -> Tensor:
        z = sae.encode(x[:, 0]).detach().requires_grad_(True)
        kept["z"] = z
        error = (x[:, 0] - sae.decode(z)).detach()
        return torch.cat([(sae.decode(z) + error)[:, None], x[:, 1:]], dim=1)

    with torch.enable_grad():
        ld = tail_outcome(model, runs, ["corrupt"], 0, [(hook, splice)]).ld
        (grad,) = torch.autograd.grad(ld.sum(), kept["z"])
    grad = grad[: runs.n] + grad[runs.n:]  # W's rows and C's read the same final position
    corrupt = kept["z"].detach()[: runs.n]
    return ((clean - corrupt) * grad).cpu()


@torch.no_grad()
def ablate_latents(model, runs: Runs, sae, hook: str, masks: Bool[Tensor, "copies latent"],
                   side: str = "corrupt") -> Outcome:
    """The outcome with each copy's latents (masks[c]) zeroed at the final position: the
    activation there moves by exactly minus their decoded contribution (the SAE's error
    term is kept), from the SAE's layer on."""
    from analysis.params import hook_layer

    latents = final_latents(model, runs, sae, hook, side).repeat(2, 1)  # W's rows, then C's: the same context
    kept = (latents[None] * ~masks.to(latents.device)[:, None]).flatten(0, 1)  # (copies * rows, latent)
    delta = sae.decode(kept) - sae.decode(latents).repeat(len(masks), 1)  # decode is affine: any normalisation holds

    def edit(x: Tensor, hook) -> Tensor:
        x = x.clone()
        x[:, 0] += delta.to(x.dtype)
        return x

    return tail_outcome(model, runs, [side] * len(masks), hook_layer(hook), [(hook, edit)])


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


def latent_mask(d_sae: int, latents: list[int]) -> Bool[Tensor, "latent"]:
    mask = torch.zeros(d_sae, dtype=torch.bool)
    mask[latents] = True
    return mask
