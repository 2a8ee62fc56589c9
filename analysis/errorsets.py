"""Error sets as the patching stage uses them: prompt pairs, prepared and batched, their
behaviour with exact intervals, the selection/evaluation split, and the schema of each
set's results (part of patching.json).

A pair is a corrupt context that should induce the error W and a clean one of the same
token length with the same query (analysis/arithmetic.py builds them as data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from analysis import causal
from analysis.arithmetic import PromptPair, few_shot_contexts, natural_pairs, placed_pairs, sequence_pairs
from analysis.artifacts import Hook, Name, Prob, Schema
from analysis.causal import PairBatch
from analysis.params import ErrorSetParams, Params
from analysis.prompts import PreparedPrompt, equal_length_batches, prepare_prompt
from analysis.scoring import greedy_answers
from analysis.stats import Estimate, PairedEstimate, mcnemar_p_value, proportion

NodeName = Annotated[str, Field(pattern=r"^(L\d{1,3}H\d{1,3}|MLP\d{1,3}|input|logits)$")]
ReceiverName = Annotated[str, Field(pattern=r"^(L\d{1,3}H\d{1,3}\.[qkv]|MLP\d{1,3}|logits)$")]


# --- results of one set ------------------------------------------------------------------

class Rates(Schema):
    """After one context: how often the greedy answer is W, and how often it is C."""

    error_rate: Estimate  # Clopper-Pearson
    correct_rate: Estimate


class ComponentTest(Schema):
    node: NodeName
    attribution: float  # normalised (or raw: see SetResult.normalised), first-order
    effect: Estimate  # exact, clean into corrupt: normalised mean over the selection half
    reverse: Estimate  # corrupt into clean (0 the clean run, 1 the corrupt one when normalised)
    p_value: float  # two-sided sign-flip
    p_holm: float  # Holm-adjusted over every component tested in the set


class Selection(Schema):
    n_pairs: int
    mean_gap: float  # mean LD(clean) - LD(corrupt), the normaliser when |mean_gap| >= min_gap
    components: list[ComponentTest]  # every MLP and the heads tested, forward order
    chosen_heads: list[NodeName]
    sites: list[Annotated[str, Field(pattern=r"^(changed|-\d{1,3})$")]]
    site_tokens: list[str]  # the first pair's corrupt token(s) at each site
    resid_layers: list[int]
    resid_exact: list[list[float]]  # (layer, site) mean effects, clean into corrupt
    resid_reverse: list[list[float]]
    resid_attribution: list[list[float]]
    agreement_mlp: float  # Spearman, attribution against exact, over every MLP
    agreement_heads: float  # over the heads tested
    resid_sign_agreement: list[Prob]  # per site: layers where attribution has the exact effect's sign
    latents: dict[Name, list[int]]  # per SAE: the latents that most favour the error, by attribution


class Intervention(Schema):
    delta_ld: PairedEstimate  # ablated - unablated LD, paired, on the evaluation half's corrupt prompts
    corrupt: Rates  # after the ablation, corrupt prompts
    clean: Rates  # after the ablation, clean prompts
    clean_correct_p: float  # McNemar: the clean prompts' correct answers, before against after


class Control(Schema):
    draws: int
    floor: float  # the smallest p these draws can give
    random_ld: list[float]  # per draw: mean ΔLD
    random_error: list[Prob]  # per draw: the error rate after the ablation
    p_ld: float  # share of draws lowering LD at least as much (+1 corrected)
    p_error: float  # share of draws with an error rate at least as low


class HeadEffect(Schema):
    node: NodeName
    effect: PairedEstimate  # exact patching clean into corrupt on the evaluation half (normalised if the set is)


class LatentResult(Schema):
    sae: Name
    hook: Hook
    latents: list[int]
    ablation: Intervention
    control: Control


class Edge(Schema):
    sender: NodeName
    receiver: ReceiverName
    position: Literal["changed", "equals", "final", "answer", "other"]
    score: float  # EAP-IG on the selection half, summed over its pairs


class ConfirmedEdge(Edge):
    exact: PairedEstimate  # edge patched alone on the evaluation half: ΔLD


class CircuitResult(Schema):
    steps: int
    steps_overlap: Prob  # of the top edges at `steps`, the share also top at twice as many (first batch)
    sizes: list[int]
    faithfulness: list[Estimate]  # per size: (LD_C - LD_clean) / (LD_corrupt - LD_clean), evaluation half
    # per size: the same share with the circuit's edges ablated and the rest of the graph
    # intact (the faithfulness of the complement; near 0: nothing outside the circuit carries it)
    kept_without: list[Estimate]
    size: int  # the circuit drawn
    faithfulness_at_size: Estimate
    edges: list[Edge]  # the circuit drawn
    minimality: dict[NodeName, Estimate]  # faithfulness lost without each of its nodes
    confirmed: list[ConfirmedEdge]
    agreement: float  # Spearman, EAP-IG score against exact ΔLD, over the confirmed edges


class Evaluation(Schema):
    n_pairs: int
    before: Rates  # the corrupt prompts, unablated (W on every one: they were chosen so)
    clean_before: Rates
    heads: list[HeadEffect]
    ablation: dict[Literal["mean", "zero"], Intervention]
    control: Control  # of the mean ablation
    latents: list[LatentResult]
    circuit: CircuitResult | None


class SetResult(Schema):
    name: Name
    kind: Literal["placed", "sequence", "natural"]
    about: str
    n_pairs: int  # pairs scored (after dropping those whose prompts tokenize to different lengths)
    n_erring: int  # pairs on which the greedy answer after the corrupt context is the error
    examples: list[list[str]]  # [corrupt, clean, error, correct] of the first pairs
    corrupt: Rates
    clean: Rates
    error_gap: PairedEstimate  # error rate, corrupt minus clean, paired by pair (McNemar's p)
    normalised: bool
    selection: Selection | None
    evaluation: Evaluation | None


# --- pairs -------------------------------------------------------------------------------

def pairs_of(spec: ErrorSetParams, n: int, params: Params, answers: Tensor) -> list[PromptPair]:
    """The set's first n pairs (seeded: asking for more gives these first). A natural set
    takes behaviour's few-shot contexts and the model's greedy answers there (`answers`)."""
    s = params.patching
    if spec.kind == "placed":
        return placed_pairs(n, spec.n_shots, tuple(spec.where), s.max_operand, s.seed)
    if spec.kind == "sequence":
        return sequence_pairs(n, s.max_operand, s.seed)
    b = params.behaviour
    contexts = few_shot_contexts(b.n_contexts, b.n_shots, b.max_operand, b.context_seed)
    found = natural_pairs(contexts, answers.tolist(), b.max_operand, lambda query: query[1] + 1, s.seed)
    return found[:n]


@dataclass(frozen=True)
class Prepared:
    pair: PromptPair
    corrupt: PreparedPrompt
    clean: PreparedPrompt

    @property
    def answers(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.corrupt.answers["error"].token_ids, self.corrupt.answers["correct"].token_ids


def prepare_pairs(model, pairs: list[PromptPair]) -> list[Prepared]:
    """Each pair with its answers; pairs whose prompts tokenize to different lengths, or whose
    answers share a first token, are left out."""
    kept = []
    for pair in pairs:
        answers = {"error": f" {pair.error}", "correct": f" {pair.correct}"}
        corrupt, clean = (prepare_prompt(model, p.text, answers) for p in (pair.corrupt, pair.clean))
        ids = corrupt.first_token_ids
        if len(corrupt.tokens) == len(clean.tokens) and ids == clean.first_token_ids and len(set(ids)) == 2:
            kept.append(Prepared(pair, corrupt, clean))
    return kept


def batches(items: list[Prepared], size: int = 32) -> list[tuple[list[int], PairBatch]]:
    """Equal-length groups of pairs, as PairBatches, with their indices into `items`."""
    out = []
    for idx in equal_length_batches([len(items[i].corrupt.tokens) for i in range(len(items))], size):
        out.append((idx, causal.make_batch([items[i].corrupt.tokens for i in idx], [items[i].clean.tokens for i in idx],
                                           [items[i].answers for i in idx])))
    return out


def rates(error: Tensor, correct: Tensor, level: float) -> Rates:
    return Rates(error_rate=proportion(int(error.sum()), len(error), level),
                 correct_rate=proportion(int(correct.sum()), len(correct), level))


@dataclass(frozen=True)
class Read:
    """Per pair and side: is the greedy answer the error W, is it the correct answer C."""

    error: dict[str, Tensor]
    correct: dict[str, Tensor]

    def __add__(self, other: Read) -> Read:
        return Read({s: torch.cat([self.error[s], other.error[s]]) for s in causal.SIDES},
                    {s: torch.cat([self.correct[s], other.correct[s]]) for s in causal.SIDES})


def read_answers(model, items: list[Prepared]) -> Read:
    """The greedy answer after each side's context, read as a number, against W and C."""
    error, correct = {}, {}
    for side in causal.SIDES:
        numbers, _ = greedy_answers(model, [getattr(item, side).tokens for item in items], max_tokens=3)
        error[side] = torch.tensor([n == item.pair.error for n, item in zip(numbers, items, strict=True)])
        correct[side] = torch.tensor([n == item.pair.correct for n, item in zip(numbers, items, strict=True)])
    return Read(error, correct)


def summarize(read: Read, level: float) -> tuple[Rates, Rates, PairedEstimate]:
    """Each side's rates (Clopper-Pearson) and the paired error gap (McNemar's exact p)."""
    diff = read.error["corrupt"].double() - read.error["clean"].double()
    gap = PairedEstimate(mean=diff.mean().item(), low=None, high=None, n=len(diff), method="exact",
                         p_value=mcnemar_p_value(int((diff > 0).sum()), int((diff < 0).sum())))
    return (rates(read.error["corrupt"], read.correct["corrupt"], level),
            rates(read.error["clean"], read.correct["clean"], level), gap)


def split(erring: list[int], seed: int) -> tuple[list[int], list[int]]:
    """The erring pairs shuffled (seeded) and halved: selection, evaluation."""
    order = torch.randperm(len(erring), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [erring[i] for i in order]
    half = len(shuffled) // 2
    return sorted(shuffled[:half]), sorted(shuffled[half:])
