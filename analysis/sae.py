"""SAE features (the study's Figures 3, 7 and 9, and the SAE half of Figure 5), measured.

DVC stage `sae@<model>`. Reads params.yaml [seed, models.<model>, prompt, family, stats,
sae] and the SAEs of `sae_train@<model>` (data/<model>/sae_train/, sae_train.json);
writes data/<model>/sae.safetensors and
data/<model>/sae.json. The paper draws its figures from them.

For each SAE, at the final position of the canonical prompt:
- the latents' activations, and their attribution: activation x the gradient of the
  metric (logit or probability of the misconception minus the correct answer, first
  distinguishing tokens) with respect to the activation, the SAE spliced in with its
  error term so that the forward pass is the model's own;
- the top features by activation and by |attribution|, and their activations on the
  control prompt;
- each feature's direct logit effect: its decoder direction through the final norm (the
  scale of the canonical forward pass) and the unembedding, on the two answers and on the
  whole vocabulary. This is the direct path only; later layers can change it;
- ablation: the SAE spliced in with its error term and the latent set to zero (or its
  mean) at every position, so that the residual changes by exactly the latent's decoded
  contribution; the change in each answer's first-token probability on the canonical
  prompt and, with 95% bootstrap intervals, on the prompt family (correct answer against
  a copy of the previous example's answer);
- the same features on the spacing variants of the prompt (Figure 7).

    python -m analysis.sae --model smollm2-135m
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from jaxtyping import Float, Int
from pydantic import Field
from torch import Tensor

from analysis import saes
from analysis.artifacts import (Hook, HubId, Level, Name, Prob, Schema, StagePaths, StageResults, load_json,
                                load_tensors, save_json, save_tensors)
from analysis.params import Params, SaeParams
from analysis.prompts import PreparedPrompt, prepare_arithmetic, prepare_family, prepare_prompt, whole_copy
from analysis.sae_methods import decoder_directions, direct_logit_effects, final_latents, final_norm_scale
from analysis.scoring import first_token_probs, score_answers
from analysis.stage import run_stage
from analysis.stats import Estimate, estimate_mean

STAGE = "sae"
# What `dvc metrics show` lists for this stage (paths into the results, fnmatch patterns).
HEADLINE = ("saes.*.quality.explained_variance", "saes.*.quality.ce_loss_recovered", "saes.*.metric",
            "saes.*.n_active", "saes.*.spacing.*.p_correct")


# --- compute ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Attribution:
    activations: Float[Tensor, "d_sae"]  # at the final position
    gradients: Float[Tensor, "d_sae"]
    metric: float

    @property
    def attribution(self) -> Float[Tensor, "d_sae"]:
        return self.activations * self.gradients


def metric_of(logits: Float[Tensor, "vocab"], plus: int, minus: int, kind: str) -> Tensor:
    if kind == "logit_diff":
        return logits[plus] - logits[minus]
    probs = logits.softmax(-1)
    return probs[plus] - probs[minus]


def compute_attribution(model, sae, hook: str, tokens: Int[Tensor, "pos"], plus: int, minus: int,
                        kind: str = "logit_diff") -> Attribution:
    """Activation and gradient of the metric for every latent at the final position."""
    captured: dict[str, Tensor] = {}

    def through_sae(x: Tensor, hook) -> Tensor:
        latents = sae.encode(x).detach().requires_grad_(True)
        captured["latents"] = latents
        error = (x - sae.decode(latents)).detach()
        return sae.decode(latents) + error

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens[None].to(model.cfg.device), fwd_hooks=[(hook, through_sae)])
        metric = metric_of(logits[0, -1], plus, minus, kind)
        metric.backward()
    latents = captured["latents"]
    return Attribution(latents[0, -1].detach().cpu(), latents.grad[0, -1].cpu(), metric.item())


def ablated_probs(model, sae, hook: str, prepared: list[PreparedPrompt], answer_names: tuple[str, str],
                  feature: int | None, value: float = 0.0) -> Float[Tensor, "prompt 2"]:
    """First-token probabilities of two answers, with one latent set to `value` everywhere
    (the SAE spliced in with its error term), or unchanged with feature None."""
    if feature is None:
        return first_token_probs(model, prepared, answer_names)

    def edit(latents: Tensor) -> Tensor:
        latents = latents.clone()
        latents[..., feature] = value
        return latents

    hooks = [(hook, saes.splice(sae, error=True, edit=edit, first_position=0))]
    return first_token_probs(model, prepared, answer_names, hooks)


def feature_order(*groups: list[int]) -> list[int]:
    """The features of the groups in turn (e.g. top by activation, by attribution, the
    reported ones), without repeats."""
    return list(dict.fromkeys(f for group in groups for f in group))


# --- results ---------------------------------------------------------------------------

class TokenEffect(Schema):
    token: str
    effect: float


class Feature(Schema):
    id: int
    activation: float
    activation_rank: int  # 1 = the most active latent at the final position
    attribution: float
    gradient: float
    control_activation: float
    unit_logit_effect: dict[str, float]  # correct, misconception: per unit of activation
    logit_contribution: dict[str, float]  # activation x unit effect, on the canonical prompt
    top_promoted: list[TokenEffect]  # per unit of activation
    top_suppressed: list[TokenEffect]
    ablation_canonical: dict[str, float]  # change in first-token probability: correct, misconception
    ablation_family: dict[str, Estimate]  # correct, copy
    neuronpedia_url: Annotated[str, Field(pattern=r"^https://www\.neuronpedia\.org/[A-Za-z0-9._/-]+$")] | None


class SpacingResult(Schema):
    prompt: str
    p_correct: Prob  # P(exactly the right number)
    p_misconception: Prob
    activations: dict[str, float]  # feature id -> activation at the final position


class SaeResult(Schema):
    source: Literal["trained", "pretrained"]
    hook: Hook
    d_sae: int
    release: HubId | None
    sae_id: HubId | None
    neuronpedia: HubId | None
    quality: saes.Quality
    metric: float  # the attribution metric on the canonical prompt, SAE spliced with error
    n_active: int
    n_active_control: int
    top_by_activation: list[int]
    top_by_attribution: list[int]
    top_favouring_error: list[int]  # of all latents, the largest positive attributions (favour the misconception)
    reported: list[int]  # features params.yaml asks for, whatever their rank
    features: dict[str, Feature]
    spacing: dict[str, SpacingResult]


class SaeMetrics(StageResults):
    model: Name
    ci_level: Level
    prompt: str
    control_prompt: str
    attribution_metric: Literal["logit_diff", "prob_diff"]
    ablation: Literal["zero", "mean"]
    answers: dict[str, str]  # first distinguishing tokens: correct, misconception
    n_family_prompts: int
    saes: dict[str, SaeResult]


# --- stage -----------------------------------------------------------------------------

def describe_feature(model, params: Params, attr: Attribution, feature: int, effects: Tensor,
                     control: Tensor, ids: tuple[int, int]) -> dict:
    """What one latent is and does directly: activation, attribution, its logit effects."""
    settings, decode = params.sae, model.tokenizer.decode
    plus, minus = ids
    activation = attr.activations[feature].item()
    unit = {"correct": effects[minus].item(), "misconception": effects[plus].item()}
    promoted, suppressed = effects.topk(settings.top_tokens), (-effects).topk(settings.top_tokens)
    return dict(
        id=feature, activation=activation, activation_rank=int((attr.activations > activation).sum()) + 1,
        attribution=attr.attribution[feature].item(), gradient=attr.gradients[feature].item(),
        control_activation=control[feature].item(),
        unit_logit_effect=unit, logit_contribution={n: activation * v for n, v in unit.items()},
        top_promoted=[TokenEffect(token=decode([i]), effect=v)
                      for i, v in zip(promoted.indices.tolist(), promoted.values.tolist(), strict=True)],
        top_suppressed=[TokenEffect(token=decode([i]), effect=-v)
                        for i, v in zip(suppressed.indices.tolist(), suppressed.values.tolist(), strict=True)],
    )


def ablate_feature(model, params: Params, sae, hook: str, feature: int, value: float, prepared: PreparedPrompt,
                   family: list[PreparedPrompt], base: tuple[Tensor, Tensor]) -> tuple[dict, Tensor]:
    """One latent set to `value`: the change on the canonical prompt and, with intervals,
    on the family. Returns (Feature fields, the family's per-prompt changes)."""
    stats = params.stats
    canonical = ablated_probs(model, sae, hook, [prepared], ("correct", "misconception"), feature, value)[0] - base[0]
    delta = ablated_probs(model, sae, hook, family, ("correct", "copy"), feature, value) - base[1]
    rows = {"correct": delta[:, 0], "copy": delta[whole_copy(family), 1]}
    fields = dict(
        ablation_canonical={"correct": canonical[0].item(), "misconception": canonical[1].item()},
        ablation_family={name: estimate_mean(values, stats.bootstrap_resamples, params.seed, stats.ci_level)
                         for name, values in rows.items()},
    )
    return fields, delta


def spacing_results(model, params: Params, sae, hook: str, ids: list[int]) -> dict[str, SpacingResult]:
    """The answers' probabilities and the features' activations on each spacing variant."""
    spacing = {}
    for name, text in params.prompt.spacing_variants.items():
        _, variant = prepare_arithmetic(model, text, params.prompt.answers.model_dump())
        scores = score_answers(model, [variant.tokens] * 2,
                               [variant.answers[n].token_ids for n in ("correct", "misconception")])
        latents = final_latents(model, sae, hook, variant.tokens)
        spacing[name] = SpacingResult(prompt=variant.context, p_correct=scores.logprob[0].exp().item(),
                                      p_misconception=scores.logprob[1].exp().item(),
                                      activations={str(f): latents[f].item() for f in ids})
    return spacing


def analyse_sae(model, params: Params, spec: SaeParams, sae, mean_activation: Tensor, quality,
                prepared: PreparedPrompt, control: PreparedPrompt, family: list[PreparedPrompt]
                ) -> tuple[SaeResult, dict[str, Tensor]]:
    settings = params.sae
    plus, minus = (prepared.answers[n].first_token_id for n in ("misconception", "correct"))
    attr = compute_attribution(model, sae, spec.hook, prepared.tokens, plus, minus, settings.attribution_metric)
    control_latents = final_latents(model, sae, spec.hook, control.tokens)
    by_activation = attr.activations.topk(settings.top_k).indices.tolist()
    by_attribution = attr.attribution.abs().topk(settings.top_k).indices.tolist()
    favouring = attr.attribution.topk(settings.top_k)
    favour_error = [i for i, a in zip(favouring.indices.tolist(), favouring.values.tolist(), strict=True) if a > 0]
    ids = feature_order(by_activation, by_attribution, favour_error, list(spec.report_features))
    effects = direct_logit_effects(model, decoder_directions(sae, ids), final_norm_scale(model, prepared.tokens))
    base = (ablated_probs(model, sae, spec.hook, [prepared], ("correct", "misconception"), None)[0],
            ablated_probs(model, sae, spec.hook, family, ("correct", "copy"), None))
    features, family_deltas = {}, []
    for row, feature in enumerate(ids):
        value = mean_activation[feature].item() if settings.ablation == "mean" else 0.0
        ablation, delta = ablate_feature(model, params, sae, spec.hook, feature, value, prepared, family, base)
        family_deltas.append(delta)
        features[str(feature)] = Feature(
            **describe_feature(model, params, attr, feature, effects[row], control_latents, (plus, minus)),
            **ablation, neuronpedia_url=f"https://www.neuronpedia.org/{spec.neuronpedia}/{feature}" if spec.neuronpedia else None)
    result = SaeResult(
        source=spec.source, hook=spec.hook, d_sae=sae.cfg.d_sae, release=spec.release, sae_id=spec.sae_id,
        neuronpedia=spec.neuronpedia, quality=quality, metric=attr.metric,
        n_active=int((attr.activations > 0).sum()), n_active_control=int((control_latents > 0).sum()),
        top_by_activation=by_activation, top_by_attribution=by_attribution, top_favouring_error=favour_error,
        reported=list(spec.report_features),
        features=features, spacing=spacing_results(model, params, sae, spec.hook, ids),
    )
    tensors = {"activations": attr.activations, "gradients": attr.gradients, "control_activations": control_latents,
               "feature_ids": torch.tensor(ids), "unit_logit_effects": effects,
               "family_ablation_deltas": torch.stack(family_deltas)}
    return result, tensors


def run(model, params: Params, key: str, paths: StagePaths) -> SaeMetrics:
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # gradients are taken with respect to SAE latents only
    answers = params.prompt.answers.model_dump()
    prepared = prepare_prompt(model, params.prompt.canonical, answers)
    control = prepare_prompt(model, params.prompt.control, answers)
    _, family = prepare_family(model, params.family)
    trained_paths = StagePaths(key, saes.STAGE, root=paths.root)
    trained = saes.load_results(trained_paths)
    results, tensors = {}, {}
    for name, spec in params.model(key).saes.items():
        sae = saes.load_sae(key, name, spec, trained_paths.dir, device=model.cfg.device)
        stats = load_tensors(trained_paths.dir / name / "stats.safetensors", {"mean_activation": (spec.d_sae,)})
        results[name], sae_tensors = analyse_sae(model, params, spec, sae, stats["mean_activation"],
                                                 trained.saes[name].quality, prepared, control, family)
        tensors.update({f"{name}/{k}": v for k, v in sae_tensors.items()})
    metrics = SaeMetrics(
        model=key, ci_level=params.stats.ci_level, prompt=prepared.context, control_prompt=control.context,
        attribution_metric=params.sae.attribution_metric, ablation=params.sae.ablation,
        answers={n: prepared.answers[n].first_token for n in ("correct", "misconception")},
        n_family_prompts=len(family), saes=results,
    )
    save_tensors(paths.tensors, tensors)
    save_json(paths.results, metrics)
    return metrics


def load_results(paths: StagePaths) -> SaeMetrics:
    return load_json(paths.results, SaeMetrics)


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv)


if __name__ == "__main__":
    main()
