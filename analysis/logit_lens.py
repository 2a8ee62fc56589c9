"""Logit lens (the study's Figure 1): each answer's probability after every layer.

DVC stage `logit_lens@<model>`. Reads params.yaml [seed, models.<model>, prompt, family,
stats, logit_lens]; writes data/<model>/logit_lens.safetensors and
data/<model>/logit_lens.json. The paper draws its figures from them.

At the final position, the residual stream after block l (`resid_post`) is passed
through the final norm and the unembedding and softmaxed, as the study does. The norm's
scale is recomputed for each layer's residual; this is the plain logit lens, which is
biased in early layers (their residual is not yet in the unembedding's basis) and exact
at the last layer, where it equals the model's own output. The same lens over the prompt
family follows the right answer's first token and the previous example's answer's.

    python -m analysis.logit_lens --model smollm2-135m
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from pydantic import model_validator
from torch import Tensor

from analysis.artifacts import (Answer, Level, Name, Prob, Schema, StagePaths, StageResults, load_json, load_tensors,
                                save_json, save_tensors)
from analysis.params import Params
from analysis.prompts import PreparedPrompt, prepare_family, prepare_prompt, run_by_length, whole_copy
from analysis.scoring import score_answers
from analysis.stage import run_stage
from analysis.stats import bootstrap_ci

STAGE = "logit_lens"
# What `dvc metrics show` lists for this stage (paths into the results, fnmatch patterns).
HEADLINE = ("correct.answer_prob", "misconception.answer_prob", "*.peak_layer", "family.n_prompts",
            "family.n_copy_prompts")


@dataclass(frozen=True)
class LensProbs:
    probs: Float[Tensor, "batch layer vocab"]  # lens probabilities at the final position
    output_probs: Float[Tensor, "batch vocab"]  # the model's own output probabilities


@torch.no_grad()
def compute_logit_lens(model, tokens: Int[Tensor, "batch pos"]) -> LensProbs:
    """Pure: resid_post of every layer -> ln_final -> W_U -> softmax, final position."""
    names = {f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)}
    logits, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda name: name in names)
    resid = torch.stack([cache[f"blocks.{layer}.hook_resid_post"][:, -1] for layer in range(model.cfg.n_layers)], dim=1)
    lens_logits = model.unembed(model.ln_final(resid))  # (batch, layer, vocab)
    return LensProbs(probs=lens_logits.softmax(-1).cpu(), output_probs=logits[:, -1].softmax(-1).cpu())


# --- results ---------------------------------------------------------------------------

class CandidateLens(Schema):
    text: Answer  # the answer string, e.g. " 10"
    answer_tokens: list[str]  # its tokens after the shared context
    first_token: str  # the first distinguishing token: what the lens tracks
    first_token_id: int
    prob_by_layer: list[Prob]
    final_prob: Prob  # the model's own output probability of first_token
    answer_prob: Prob  # P(the answer is exactly this number | context): its tokens, then no further digit
    peak_layer: int


class TopToken(Schema):
    token: str
    token_id: int
    prob: Prob


class Band(Schema):
    mean: list[Prob]  # per layer
    low: list[Prob]
    high: list[Prob]


class FamilyLens(Schema):
    n_prompts: int
    ci_level: Level
    correct: Band  # the right answer's first token
    n_copy_prompts: int  # the prompts whose copy is one token after the context (prompts.whole_copy)
    previous_answer: Band  # the previous example's answer's first token (a copy), on those prompts


class LogitLensMetrics(StageResults):
    model: Name
    model_label: str
    prompt_as_written: str
    prompt: str  # the context actually fed to the model
    prompt_tokens: list[str]
    n_layers: int
    correct: CandidateLens
    misconception: CandidateLens
    top_final: list[TopToken]
    lens_vs_output_max_abs_diff: float  # last layer's lens against the model's output
    family: FamilyLens | None = None

    @model_validator(mode="after")
    def _lengths(self) -> LogitLensMetrics:
        for name in ("correct", "misconception"):
            got = len(getattr(self, name).prob_by_layer)
            if got != self.n_layers:
                raise ValueError(f"{name}.prob_by_layer has {got} values for {self.n_layers} layers")
        return self


def summarize(key: str, label: str, prepared: PreparedPrompt, lens: LensProbs,
              answer_probs: dict[str, float], top_k: int, decode) -> LogitLensMetrics:
    """Pure: the metrics of one prompt's lens (batch index 0). `decode` maps a token id to text."""
    probs, output = lens.probs[0], lens.output_probs[0]
    candidates = {}
    for name, answer in prepared.answers.items():
        by_layer = probs[:, answer.first_token_id]
        candidates[name] = CandidateLens(
            text=answer.text,
            answer_tokens=list(answer.token_strs),
            first_token=answer.first_token,
            first_token_id=answer.first_token_id,
            prob_by_layer=by_layer.tolist(),
            final_prob=output[answer.first_token_id].item(),
            answer_prob=answer_probs[name],
            peak_layer=int(by_layer.argmax()),
        )
    top = output.topk(top_k)
    return LogitLensMetrics(
        model=key,
        model_label=label,
        prompt_as_written=prepared.prompt,
        prompt=prepared.context,
        prompt_tokens=list(prepared.str_tokens),
        n_layers=probs.shape[0],
        top_final=[
            TopToken(token=decode(i), token_id=i, prob=p)
            for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ],
        lens_vs_output_max_abs_diff=(probs[-1] - output).abs().max().item(),
        **candidates,
    )


def compute_family_lens(model, prepared: list[PreparedPrompt]) -> Float[Tensor, "prompt layer 2"]:
    """Lens probability of each prompt's correct and copy first tokens, at every layer."""
    def lens_of(tokens: Tensor, indices: list[int]) -> Tensor:
        ids = torch.tensor([[prepared[i].answers[n].first_token_id for n in ("correct", "copy")] for i in indices])
        probs = compute_logit_lens(model, tokens).probs  # (batch, layer, vocab)
        return probs.gather(-1, ids[:, None, :].expand(-1, probs.shape[1], -1))

    return run_by_length(prepared, lens_of)


def summarize_family(values: Float[Tensor, "prompt layer 2"], copy_rows: Bool[Tensor, "prompt"],
                     params: Params) -> FamilyLens:
    bands = {}
    for col, name in enumerate(("correct", "previous_answer")):
        rows = values[..., col] if name == "correct" else values[copy_rows, :, col]
        low, high = bootstrap_ci(rows, params.stats.bootstrap_resamples, params.seed, params.stats.ci_level)
        bands[name] = Band(mean=rows.mean(0).tolist(), low=low.tolist(), high=high.tolist())
    return FamilyLens(n_prompts=len(values), ci_level=params.stats.ci_level, n_copy_prompts=int(copy_rows.sum()),
                      **bands)


def curves(metrics: LogitLensMetrics) -> dict[str, list[dict[str, float]]]:
    """The per-layer curve that dvc.yaml declares as a plot (StageSpec.plots)."""
    family = metrics.family
    return {"layers": [{"layer": layer, "correct": correct, "copy": copy} for layer, (correct, copy)
                       in enumerate(zip(family.correct.mean, family.previous_answer.mean, strict=True))]}


# --- stage -----------------------------------------------------------------------------

def load_results(paths: StagePaths) -> tuple[LogitLensMetrics, dict[str, Tensor]]:
    metrics = load_json(paths.results, LogitLensMetrics)
    tensors = load_tensors(paths.tensors, {"lens_probs": (metrics.n_layers, 2)})
    return metrics, tensors


def run(model, params: Params, key: str, paths: StagePaths) -> LogitLensMetrics:
    spec = params.model(key)
    prepared = prepare_prompt(model, params.prompt.canonical, params.prompt.answers.model_dump())
    lens = compute_logit_lens(model, prepared.tokens[None])
    names = list(prepared.answers)
    scores = score_answers(model, [prepared.tokens] * len(names), [prepared.answers[n].token_ids for n in names])
    answer_probs = {name: math.exp(lp) for name, lp in zip(names, scores.logprob.tolist(), strict=True)}
    metrics = summarize(key, spec.label, prepared, lens, answer_probs, params.logit_lens.top_k,
                        decode=lambda i: model.tokenizer.decode([i]))
    _, family = prepare_family(model, params.family)
    family_lens = compute_family_lens(model, family)
    metrics.family = summarize_family(family_lens, whole_copy(family), params)
    save_tensors(paths.tensors, {
        "lens_probs": lens.probs[0][:, prepared.first_token_ids],  # (layer, [correct, misconception])
        "output_probs": lens.output_probs[0],
        "tokens": prepared.tokens,
        "family_lens": family_lens,  # (prompt, layer, [correct, copy])
    })
    save_json(paths.results, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv, curves=curves)


if __name__ == "__main__":
    main()
