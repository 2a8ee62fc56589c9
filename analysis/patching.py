"""The model's own errors, explained causally, out of sample (the study's Figures 4 and 10).

DVC stage `patching@<model>`. Reads params.yaml [seed, models.<model>, prompt, stats,
behaviour, patching], the SAEs of sae_train and behaviour's greedy answers; writes
data/<model>/patching.safetensors and data/<model>/patching.json.

Error sets (params: patching.sets): prompt pairs of a corrupt context that should induce
the error W and a clean one of the same token length with the same query. For every set,
the error and correct-answer rates after each context, with exact intervals. A set in
`patching.causal` is generated until it holds `min_erring` pairs on which the model gives
W after the corrupt context (at most `max_pairs`); the first `max_erring` of those pairs
(in the seeded order they were generated) are split at random into a
selection half and an evaluation half. Everything that is chosen (heads, latents, the
circuit and its size) is chosen on the selection half; every effect stated is measured on
the evaluation half:

- selection: attribution patching ranks the heads; every MLP and the top heads are patched
  exactly at the final position, both ways; the heads whose effect passes `min_effect` with
  a Holm-adjusted sign-flip p below `alpha` are chosen. The residual stream is patched at
  the changed tokens and the last positions, and compared with attribution. SAE latents
  are ranked by attribution; EAP-IG scores every edge (analysis/circuit.py).
- evaluation: the chosen heads' own effects; the chosen heads mean- and zero-ablated at the
  final position (LD, error and correct-answer rates, on the corrupt and on the clean
  prompts), against `random_draws` layer-matched random head sets (separate p for LD and
  for the error rate); the chosen latents zeroed against activation-matched random ones;
  the circuit's faithfulness and the share kept without it at every size, each node's minimality, and
  the top edges patched exactly.

The metric is the whole-answer LD = log P(W) - log P(C) (analysis/causal.py); normalised
effects divide by the selection half's mean clean-minus-corrupt LD when it is at least
`min_gap`. Intervals: Clopper-Pearson for rates, the studentised bootstrap for means over
pairs (analysis/stats.py), the percentile bootstrap for circuit ratios.

    python -m analysis.patching --model smollm2-135m
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from analysis import causal, circuit
from analysis.artifacts import Name, Prob, Schema, StagePaths, StageResults, load_json, load_tensors, save_json, save_tensors
from analysis.causal import Outcome, PairBatch, Runs
from analysis.errorsets import (ComponentTest, ConfirmedEdge, Control, CircuitResult, Edge, Evaluation, HeadEffect, Rates,
                                Intervention, LatentResult, Prepared, Read, Selection, SetResult, batches,
                                pairs_of, prepare_pairs, rates, read_answers, split, summarize)
from analysis.params import ErrorSetParams, Params
from analysis.prompts import prepare_prompt
from analysis.saes import STAGE as SAE_TRAIN
from analysis.saes import load_sae
from analysis.scoring import continues_number, greedy_answers, score_and_read
from analysis.stage import run_stage
from analysis.stats import (Estimate, PairedEstimate, control_p_value, estimate_mean, holm, mcnemar_p_value,
                            proportion, ratio_of_means, sign_flip_p_value, studentized_mean)
from analysis.timing import progress, timed

STAGE = "patching"
HEADLINE = ("examples.error_rate.mean", "sets.*.corrupt.error_rate.mean", "sets.*.clean.error_rate.mean",
            "sets.*.n_erring", "sets.*.evaluation.ablation.mean.corrupt.error_rate.mean",
            "sets.*.evaluation.ablation.mean.delta_ld.mean", "sets.*.evaluation.control.p_ld",
            "sets.*.evaluation.control.p_error", "sets.*.evaluation.circuit.faithfulness_at_size.mean")


# --- results ---------------------------------------------------------------------------

class SpacingResult(Schema):
    """The doubles contexts with and without spaces around + and =: greedy answers, paired."""

    spaced: Rates
    unspaced: Rates
    p_value: float  # exact McNemar, correct answers with spaces against without


class ExamplesResult(Schema):
    """The canonical query with and without the study's examples, and after every context of
    two doubles examples like the study's (doubles_contexts)."""

    with_examples: str
    without_examples: str
    p: dict[Literal["with_examples", "without_examples"], dict[Literal["correct", "misconception"], Prob]]
    greedy: dict[Literal["with_examples", "without_examples"], int | None]
    n_contexts: int
    error_rate: Estimate  # Clopper-Pearson: the greedy answer is the misconception
    p_misconception: Estimate
    p_correct: Estimate
    spacing: SpacingResult


class PatchingMetrics(StageResults):
    model: Name
    n_layers: int
    n_heads: int
    ci_level: float
    alpha: float  # a Holm-adjusted p below this chose a component
    sets: dict[Name, SetResult]
    empty_sets: list[Name]  # sets of params without a single pair for this model
    examples: ExamplesResult


def load_results(paths: StagePaths) -> PatchingMetrics:
    return load_json(paths.results, PatchingMetrics)


def curves(metrics: PatchingMetrics) -> dict[str, list[dict[str, float]]]:
    """The per-layer MLP curve of the first causal set with a selection (StageSpec.plots)."""
    chosen = next((s.selection for s in metrics.sets.values() if s.selection), None)
    if chosen is None:
        return {"layers": [{"layer": l, "exact": 0.0, "attribution": 0.0} for l in range(metrics.n_layers)]}
    mlps = [c for c in chosen.components if c.node.startswith("MLP")]
    return {"layers": [{"layer": int(c.node[3:]), "exact": c.effect.mean, "attribution": c.attribution} for c in mlps]}


# --- one error set ---------------------------------------------------------------------

def node_name(node: causal.Node) -> str:
    layer, head = node
    return f"MLP{layer}" if head is None else f"L{layer}H{head}"


def behaviour_pairs(model, params: Params, name: str, spec: ErrorSetParams, answers: Tensor
                    ) -> tuple[list[Prepared], Read | None]:
    """The set's pairs and their greedy answers: n_pairs of them, and for a causal set more,
    n_pairs at a time, until min_erring pairs err after the corrupt context (max_pairs at most).
    No read (None) when the set has no pair for this model (a natural set it never makes)."""
    s = params.patching
    wanted = s.max_pairs if name in s.causal else s.n_pairs
    items: list[Prepared] = []
    read: Read | None = None
    taken = 0
    while taken < wanted:
        pairs = pairs_of(spec, min(wanted, taken + s.n_pairs), params, answers)  # the same first pairs each time
        new = prepare_pairs(model, pairs[taken:])
        taken = len(pairs) if len(pairs) > taken else wanted  # a natural set may hold fewer than asked
        if new:
            items += new
            read = read_answers(model, new) if read is None else read + read_answers(model, new)
        if read is not None and (name not in s.causal or int(read.error["corrupt"].sum()) >= s.min_erring):
            break
    return items, read


def analyse_set(model, params: Params, name: str, spec: ErrorSetParams, saes: dict[str, LoadedSae],
                answers: Tensor) -> tuple[SetResult | None, dict[str, Tensor]]:
    """Behaviour on every pair; on a causal set with enough erring pairs, selection on one
    half and evaluation on the other."""
    s, level = params.patching, params.stats.ci_level
    items, read = behaviour_pairs(model, params, name, spec, answers)
    if read is None:
        return None, {}
    corrupt, clean, gap = summarize(read, level)
    erring = read.error["corrupt"].nonzero()[:, 0].tolist()
    result = SetResult(name=name, kind=spec.kind, about=spec.about, n_pairs=len(items), n_erring=len(erring),
                       examples=[[i.pair.corrupt.text, i.pair.clean.text, str(i.pair.error), str(i.pair.correct)]
                                 for i in items[:3]], corrupt=corrupt, clean=clean, error_gap=gap, normalised=False,
                       selection=None, evaluation=None)
    if name not in s.causal or len(erring) < s.min_erring:
        return result, {}
    chosen, held_out = split(erring[: s.max_erring], s.split_seed)
    with timed(f"{name} set: selection ({len(chosen)} pairs)"):
        sel = select(model, params, name, [items[i] for i in chosen], saes)
    with timed(f"{name} set: evaluation ({len(held_out)} pairs)"):
        evaluation = evaluate(model, params, [items[i] for i in held_out], sel, saes)
    tensors = {f"{name}/{key}": value for key, value in sel.tensors.items()}
    return result.model_copy(update={"normalised": sel.normalised, "selection": sel.result,
                                     "evaluation": evaluation}), tensors


@dataclass
class Chosen:
    """What the selection half chose, and what the evaluation reuses."""

    result: Selection
    normalised: bool
    gap: float
    heads: list[tuple[int, int]]
    mean_values: Tensor  # every head's mean z at the final position over the selection's clean contexts
    latents: dict[str, list[int]]
    scores: Tensor | None  # EAP-IG, summed over the selection's pairs
    steps_overlap: float
    tensors: dict[str, Tensor]


def _gather(groups: list[tuple[list[int], object]], parts: list[Tensor], n: int) -> Tensor:
    """Per-group results (pairs first) put back in the pairs' order."""
    out = torch.empty(n, *parts[0].shape[1:], dtype=parts[0].dtype)
    for (idx, _), part in zip(groups, parts, strict=True):
        out[idx] = part
    return out


def _studentized(values: Tensor, params: Params) -> Estimate:
    return studentized_mean(values.double(), params.stats.bootstrap_resamples, params.seed, params.stats.ci_level)


def _paired(values: Tensor, params: Params) -> PairedEstimate:
    base = _studentized(values, params)
    return PairedEstimate(**base.model_dump(), p_value=sign_flip_p_value(values, 20_000, params.seed))


def spearman(a: Tensor, b: Tensor) -> float:
    """Rank correlation of two vectors (ties broken by position)."""
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def _sites(batch: PairBatch, n_last: int) -> list[Tensor]:
    """Position masks: the changed tokens together, then each of the last n_last positions."""
    columns = []
    for k in range(n_last, 0, -1):
        mask = torch.zeros_like(batch.changed)
        mask[:, -k] = True
        columns.append(mask)
    return [batch.changed, *columns]


def select(model, params: Params, name: str, items: list[Prepared], saes: dict[str, LoadedSae]) -> Chosen:
    s = params.patching
    groups = batches(items)
    runs = [causal.prepare_runs(model, batch) for _, batch in groups]
    n = len(items)
    ld = {side: _gather(groups, [r.base[side].ld[0] for r in runs], n) for side in causal.SIDES}
    gap = (ld["clean"] - ld["corrupt"]).mean().item()
    normalised = abs(gap) >= s.min_gap
    scale = gap if normalised else 1.0
    with timed("  attribution"):
        attributions = [causal.compute_attribution(model, r) for r in runs]
    head_attr = _gather(groups, [a.heads for a in attributions], n) / scale
    layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    ranked = head_attr.mean(0).flatten().abs().argsort(descending=True)
    tested = [divmod(int(i), n_heads) for i in (ranked if s.exhaustive_heads else ranked[: s.top_heads])]
    nodes = ([] if model.cfg.attn_only else [(l, None) for l in range(layers)]) + sorted(tested)
    with timed(f"  {len(nodes)} components patched both ways"):
        patched = _gather(groups, [causal.compute_component_patching(model, r, nodes).transpose(0, 1) for r in runs], n)
    effect = (patched[:, 0] - ld["corrupt"][:, None]) / scale
    reverse = (ld["clean"][:, None] - patched[:, 1]) / scale
    mlp_attr = _gather(groups, [a.mlp for a in attributions], n) / scale
    attr = [mlp_attr[:, l].mean().item() if h is None else head_attr[:, l, h].mean().item() for l, h in nodes]
    p_values = [sign_flip_p_value(effect[:, i], 20_000, params.seed) for i in range(len(nodes))]
    adjusted = holm(p_values)
    components = [ComponentTest(node=node_name(node), attribution=attr[i], effect=_studentized(effect[:, i], params),
                                reverse=_studentized(reverse[:, i], params), p_value=p_values[i], p_holm=adjusted[i])
                  for i, node in enumerate(nodes)]
    chosen = [node for i, node in enumerate(nodes) if node[1] is not None and normalised
              and adjusted[i] < s.alpha and effect[:, i].mean() >= s.min_effect]
    with timed("  residual stream maps"):
        resid = resid_maps(model, params, groups, runs, attributions, ld, scale)
    mlp_nodes = [i for i, node in enumerate(nodes) if node[1] is None]
    head_nodes = [i for i, node in enumerate(nodes) if node[1] is not None]
    exact_means = effect.mean(0)
    with timed("  latent attribution"):
        latents = {name: top_latents(model, runs, groups, loaded, s.top_latents) for name, loaded in saes.items()}
    values = sum(causal.mean_head_outputs(model, r) * r.n for r in runs) / n
    with timed("  EAP-IG"):
        scores, overlap = (eap_ig(model, params, groups) if name in s.circuit else (None, 1.0))
    first = items[0]
    changed = (first.corrupt.tokens != first.clean.tokens).nonzero()[:, 0].tolist()
    site_tokens = ["+".join(first.corrupt.str_tokens[i] for i in changed)] + list(first.corrupt.str_tokens[-s.last_positions:])
    result = Selection(
        n_pairs=n, mean_gap=gap, components=components, chosen_heads=[node_name(h) for h in chosen],
        sites=["changed", *(f"{-k}" for k in range(s.last_positions, 0, -1))], site_tokens=site_tokens,
        resid_layers=resid["layers"], resid_exact=resid["exact"], resid_reverse=resid["reverse"],
        resid_attribution=resid["attribution"],
        agreement_mlp=spearman(torch.tensor([attr[i] for i in mlp_nodes]), exact_means[mlp_nodes]) if mlp_nodes else 0.0,
        agreement_heads=spearman(torch.tensor([attr[i] for i in head_nodes]), exact_means[head_nodes]),
        resid_sign_agreement=resid["sign"], latents=latents)
    tensors = {"selection/ld_corrupt": ld["corrupt"], "selection/ld_clean": ld["clean"], "selection/effect": effect,
               "selection/reverse": reverse, "selection/head_attribution": head_attr}
    if scores is not None:
        tensors["selection/eap_ig"] = scores
    return Chosen(result, normalised, gap, chosen, values, latents, scores, overlap, tensors)


def resid_maps(model, params: Params, groups, runs: list[Runs], attributions, ld: dict[str, Tensor], scale: float
               ) -> dict:
    """Residual-stream patching (both ways) at the changed tokens and the last positions,
    every `resid_layer_stride` layers, with attribution at the same sites and the share of
    layers where attribution has the exact effect's sign."""
    s = params.patching
    layers = list(range(0, model.cfg.n_layers, s.resid_layer_stride))
    n = sum(r.n for r in runs)
    maps, attrs = [], []
    for (_, batch), r, a in zip(groups, runs, attributions, strict=True):
        sites = _sites(batch, s.last_positions)
        maps.append(causal.compute_resid_patching(model, r, sites, layers).transpose(0, 1))
        attrs.append(torch.stack([(a.resid * m[:, None, :]).sum(-1) for m in sites], dim=-1)[:, layers])
    both = _gather(groups, maps, n)
    exact = (both[:, 0] - ld["corrupt"][:, None, None]) / scale
    reverse = (ld["clean"][:, None, None] - both[:, 1]) / scale
    attribution = _gather(groups, attrs, n) / scale
    signs = (exact.mean(0).sign() == attribution.mean(0).sign()).double().mean(0)
    return {"layers": layers, "exact": exact.mean(0).tolist(), "reverse": reverse.mean(0).tolist(),
            "attribution": attribution.mean(0).tolist(), "sign": signs.tolist()}


def top_latents(model, runs: list[Runs], groups, loaded: LoadedSae, k: int) -> list[int]:
    """The k latents whose attribution at the final position favours the error most (the
    most negative: their corrupt values push towards it)."""
    n = sum(r.n for r in runs)
    attribution = _gather(groups, [causal.latent_attribution(model, r, loaded.sae, loaded.hook) for r in runs], n)
    return attribution.mean(0).argsort()[:k].tolist()


def eap_ig(model, params: Params, groups) -> tuple[Tensor, float]:
    """EAP-IG scores summed over the selection's first `eap_ig_pairs` pairs (8 at a time), and,
    on the first 8, the share of the top edges at `steps` that are also top at twice as many."""
    s = params.patching
    equals = model.tokenizer.convert_tokens_to_ids("=")
    total, overlap, left = None, 1.0, s.eap_ig_pairs
    continuing = continues_number(model)
    for _, batch in groups:
        for start in range(0, min(len(batch.corrupt), left), 8):
            end = min(start + 8, left)
            part = causal.PairBatch(*(t[start:end] for t in (batch.corrupt, batch.clean, batch.answers, batch.lengths)))
            classes = circuit.position_classes(part, equals)
            scores = circuit.eap_ig_scores(model, part, classes, continuing, s.eap_ig_steps)
            if total is None:
                finer = circuit.eap_ig_scores(model, part, classes, continuing, 2 * s.eap_ig_steps)
                k = s.circuit_size
                overlap = (circuit.top_edges(scores, k) & circuit.top_edges(finer, k)).sum().item() / k
            total = scores if total is None else total + scores
        left -= len(batch.corrupt)
        if left <= 0:
            break
    return total, overlap


# --- the evaluation half -----------------------------------------------------------------

def _intervention(params: Params, before: dict[str, Outcome], after: dict[str, Outcome]) -> Intervention:
    level = params.stats.ci_level
    became = int((~before["clean"].correct[0] & after["clean"].correct[0]).sum())
    ceased = int((before["clean"].correct[0] & ~after["clean"].correct[0]).sum())
    return Intervention(delta_ld=_paired(after["corrupt"].ld[0] - before["corrupt"].ld[0], params),
                        corrupt=rates(after["corrupt"].error[0], after["corrupt"].correct[0], level),
                        clean=rates(after["clean"].error[0], after["clean"].correct[0], level),
                        clean_correct_p=mcnemar_p_value(became, ceased))


def _joined(outcomes: list[Outcome]) -> Outcome:
    return causal.joined(outcomes, 1)


def _control(observed: Outcome, base: Outcome, random: Outcome, draws: int) -> Control:
    random_ld = (random.ld - base.ld).mean(1).tolist()
    random_error = random.error.double().mean(1).tolist()
    observed_ld = (observed.ld - base.ld).mean().item()
    observed_error = observed.error.double().mean().item()
    return Control(draws=draws, floor=1 / (1 + draws), random_ld=random_ld, random_error=random_error,
                   p_ld=control_p_value(observed_ld, random_ld), p_error=control_p_value(observed_error, random_error))


def evaluate(model, params: Params, items: list[Prepared], sel: Chosen, saes: dict[str, LoadedSae]) -> Evaluation:
    s, level = params.patching, params.stats.ci_level
    groups = batches(items)
    runs = [causal.prepare_runs(model, batch) for _, batch in groups]
    before = {side: _joined([r.base[side] for r in runs]) for side in causal.SIDES}
    heads = head_effects(model, params, groups, runs, sel)
    ablation, control = {}, None
    if sel.heads:
        masks = causal.head_mask(model.cfg.n_layers, model.cfg.n_heads, sel.heads)[None]
        for kind, values in (("mean", sel.mean_values), ("zero", torch.zeros_like(sel.mean_values))):
            after = {side: _joined([causal.ablate_heads(model, r, masks, values, side) for r in runs])
                     for side in causal.SIDES}
            ablation[kind] = _intervention(params, before, after)
        with timed(f"  {s.random_draws} layer-matched random head sets"):
            observed, random = causal.controlled_ablation(model, runs, sel.heads, [sel.mean_values] * len(runs),
                                                          s.random_draws, params.seed, s.draw_rows)
        control = _control(observed, before["corrupt"], random, s.random_draws)
    latents = [latent_result(model, params, runs, before, name, loaded, sel.latents[name])
               for name, loaded in saes.items()]
    found = circuit_result(model, params, groups, sel) if sel.scores is not None else None
    return Evaluation(n_pairs=len(items), before=rates(before["corrupt"].error[0], before["corrupt"].correct[0], level),
                      clean_before=rates(before["clean"].error[0], before["clean"].correct[0], level), heads=heads,
                      ablation=ablation, control=control or Control(draws=0, floor=1.0, random_ld=[], random_error=[],
                                                                     p_ld=1.0, p_error=1.0),
                      latents=latents, circuit=found)


def head_effects(model, params: Params, groups, runs: list[Runs], sel: Chosen) -> list[HeadEffect]:
    """Each chosen head patched alone (clean into corrupt) on the evaluation half."""
    if not sel.heads:
        return []
    n = sum(r.n for r in runs)
    patched = _gather(groups, [causal.compute_component_patching(model, r, sel.heads)[0] for r in runs], n)
    base = _gather(groups, [r.base["corrupt"].ld[0] for r in runs], n)
    scale = sel.gap if sel.normalised else 1.0
    return [HeadEffect(node=node_name(h), effect=_paired((patched[:, i] - base) / scale, params))
            for i, h in enumerate(sel.heads)]


def latent_result(model, params: Params, runs: list[Runs], before: dict[str, Outcome], name: str, loaded: LoadedSae,
                  latents: list[int]) -> LatentResult:
    """The chosen latents zeroed at the final position, against activation-matched draws."""
    s = params.patching
    d_sae = len(loaded.corpus_activation)
    mask = causal.latent_mask(d_sae, latents)[None]
    after = {side: _joined([causal.ablate_latents(model, r, loaded.sae, loaded.hook, mask, side) for r in runs])
             for side in causal.SIDES}
    draws = causal.matched_latent_sets(loaded.corpus_activation, latents, s.latent_match_window, s.random_draws,
                                       params.seed)
    masks = torch.stack([causal.latent_mask(d_sae, d) for d in draws])
    random = []
    for r in runs:
        per = causal.copies_per_run(r, s.draw_rows)
        random.append(causal.joined([causal.ablate_latents(model, r, loaded.sae, loaded.hook, masks[i: i + per])
                                     for i in range(0, len(draws), per)], 0))
    random = _joined(random)
    return LatentResult(sae=name, hook=loaded.hook, latents=latents, ablation=_intervention(params, before, after),
                        control=_control(after["corrupt"], before["corrupt"], random, len(draws)))


def circuit_result(model, params: Params, groups, sel: Chosen) -> CircuitResult:
    """Faithfulness, and the share kept without the circuit, at every size, the drawn circuit with each node's
    minimality, and the top edges patched exactly, all on the evaluation half."""
    s, stats = params.patching, params.stats
    equals = model.tokenizer.convert_tokens_to_ids("=")
    continuing = continues_number(model)
    graph = circuit.graph_of(model)
    prepared = [(batch, circuit.position_classes(batch, equals), circuit.clean_run(model, batch, continuing))
                for _, batch in groups]
    n = sum(len(batch.corrupt) for _, batch in groups)
    corrupt = _gather(groups, [circuit.plain_ld(model, batch, "corrupt", continuing) for _, batch in groups], n)
    clean = _gather(groups, [clean_run.ld for _, _, clean_run in prepared], n)

    def share(ld: Tensor) -> Estimate:
        return ratio_of_means(ld - clean, corrupt - clean, stats.bootstrap_resamples, params.seed, stats.ci_level)

    def run(edges: Tensor, complement: bool = False) -> Tensor:
        return _ld_of(model, groups, prepared, edges, continuing, complement)

    sizes = [k for k in s.circuit_sizes if k <= int((sel.scores != 0).sum())]
    faithfulness, kept_without = [], []
    for k in progress(sizes, "circuits", unit="size"):
        edges = circuit.top_edges(sel.scores, k)
        faithfulness.append(share(run(edges)))
        kept_without.append(share(run(edges, complement=True)))
    drawn = circuit.top_edges(sel.scores, s.circuit_size)
    drawn_ld = run(drawn)
    minimality = {node: ratio_of_means(drawn_ld - run(circuit.node_edges(graph, drawn, node)), corrupt - clean,
                                       stats.bootstrap_resamples, params.seed, stats.ci_level)
                  for node in circuit.circuit_nodes(graph, drawn)}
    confirmed = confirm_edges(model, params, groups, prepared, sel.scores, graph, continuing, corrupt)
    return CircuitResult(
        steps=s.eap_ig_steps, steps_overlap=sel.steps_overlap, sizes=sizes, faithfulness=faithfulness,
        kept_without=kept_without, size=s.circuit_size, faithfulness_at_size=share(drawn_ld),
        edges=[_edge(graph, sel.scores, u, v, c) for u, v, c in drawn.nonzero().tolist()], minimality=minimality,
        confirmed=confirmed,
        agreement=spearman(torch.tensor([e.score for e in confirmed]), torch.tensor([e.exact.mean for e in confirmed])))


def _ld_of(model, groups, prepared, edges: Tensor, continuing: Tensor, complement: bool = False) -> Tensor:
    n = sum(len(batch.corrupt) for batch, _, _ in prepared)
    parts = [circuit.circuit_ld(model, batch, edges, classes, clean, continuing, complement)
             for batch, classes, clean in prepared]
    return _gather(groups, parts, n)


def _edge(graph, scores: Tensor, u: int, v: int, c: int) -> Edge:
    return Edge(sender=graph.senders[u], receiver=graph.receivers[v], position=circuit.CLASSES[c],
                score=scores[u, v, c].item())


def confirm_edges(model, params: Params, groups, prepared, scores: Tensor, graph, continuing: Tensor,
                  corrupt: Tensor) -> list[ConfirmedEdge]:
    """The top edges by |EAP-IG score|, each patched alone (its sender's clean output at the
    receiver, at its positions) on the evaluation half: the change in LD."""
    top = circuit.top_edges(scores, params.patching.confirm_edges).nonzero().tolist()
    out = []
    for u, v, c in top:
        single = torch.zeros_like(scores, dtype=torch.bool)
        single[u, v, c] = True
        ld = _ld_of(model, groups, prepared, single, continuing, complement=True)
        out.append(ConfirmedEdge(**_edge(graph, scores, u, v, c).model_dump(), exact=_paired(ld - corrupt, params)))
    return sorted(out, key=lambda e: -abs(e.score))


def run(model, params: Params, key: str, paths: StagePaths) -> PatchingMetrics:
    model.requires_grad_(False)  # gradients are taken with respect to activations only (4x faster backward)
    saes = load_saes(model, params, key, paths)
    answers = load_tensors(StagePaths(key, "behaviour", root=paths.root).tensors, {"few_shot/answers": 2})
    results, tensors = {}, {}
    for name, spec in params.patching.sets.items():
        with timed(f"{name} set"):
            results[name], set_tensors = analyse_set(model, params, name, spec, saes, answers["few_shot/answers"])
        tensors.update(set_tensors)
    empty = [name for name, result in results.items() if result is None]
    metrics = PatchingMetrics(model=key, n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
                              ci_level=params.stats.ci_level, alpha=params.patching.alpha,
                              sets={n: r for n, r in results.items() if r is not None}, empty_sets=empty, examples=examples_result(model, params))
    save_tensors(paths.tensors, tensors)
    save_json(paths.results, metrics)
    return metrics


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

    wrong = sum(r == numbers["misconception"] for r in read[2:])
    unspaced = [prepare_prompt(model, unspace(text), answers).tokens for text in contexts]
    read_unspaced, _ = greedy_answers(model, unspaced, max_tokens=3)
    return ExamplesResult(
        with_examples=texts[0], without_examples=texts[1],
        p={kind: dict(zip(answers, p[i].tolist(), strict=True)) for i, kind in enumerate(kinds)},
        greedy={kind: read[i] for i, kind in enumerate(kinds)}, n_contexts=len(contexts),
        error_rate=proportion(wrong, len(contexts), stats.ci_level),
        p_misconception=est(p[2:, 1]), p_correct=est(p[2:, 0]),
        spacing=spacing_result(read[2:], read_unspaced, numbers, stats.ci_level))


def unspace(text: str) -> str:
    """`1 + 1 = 2. 5 + 5 =` as `1+1=2. 5+5=` (the study's unspaced variant)."""
    return text.replace(" + ", "+").replace(" =", "=").replace("= ", "=")


def spacing_result(spaced: list, unspaced: list, numbers: dict[str, int], level: float) -> SpacingResult:
    def rates_of(read: list) -> Rates:
        return rates(torch.tensor([r == numbers["misconception"] for r in read]),
                     torch.tensor([r == numbers["correct"] for r in read]), level)

    right = [(a == numbers["correct"], b == numbers["correct"]) for a, b in zip(spaced, unspaced, strict=True)]
    return SpacingResult(spaced=rates_of(spaced), unspaced=rates_of(unspaced),
                         p_value=mcnemar_p_value(sum(a and not b for a, b in right), sum(b and not a for a, b in right)))


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv, curves=curves)


if __name__ == "__main__":
    main()
