"""Does a trained SAE's story survive retraining? The same SAE trained with other seeds,
its latents matched to the first seed's by decoder direction.

DVC stage `sae_seeds@<model>`. Reads params.yaml [seed, models.<model>, prompt, family,
sae_train, sae_seeds], the SAEs of `sae_train@<model>` (the first seed, sae_train.seed),
and the latents that `sae@<model>` and `patching@<model>` name (sae.json, patching.json);
writes data/<model>/sae_seeds.safetensors and data/<model>/sae_seeds.json.

For each trained SAE (a pretrained one has no seeds to vary: its named latents are listed
as untested) and each seed in
`sae_seeds.seeds`: an SAE trained exactly as sae_train trains it, on the same activations
(collected once), but for the seed, and its quality on the same held-out windows. A
latent of the first seed is found again in another seed when some latent there has a
decoder direction with cosine similarity at least `match_threshold` (its best match).
Reported:

- per seed: its quality, the share of the first seed's live latents found again, and how
  many of the first seed's top latents on the canonical prompt (by activation) have their
  match among that seed's top latents;
- the spread (largest minus smallest over all seeds) of every quality number: the
  tolerance `make verify` gives a retrained SAE;
- every latent the paper names (the sae stage's top latents, the latents the patching
  stage ablates): its best match in each seed with the cosine, the match's activation at
  the canonical prompt's final position and its direct logit effect (misconception minus
  correct answer, through the final norm); a finding about a latent holds in every seed
  when every seed has a match above the threshold that pushes the logits the same way
  and, if the latent is active on the prompt, is active there too.

    python -m analysis.sae_seeds --model smollm2-135m
"""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analysis import saes
from analysis.artifacts import (Name, Prob, Schema, StagePaths, StageResults, load_json, load_tensors, read_results,
                                save_json, save_tensors)
from analysis.corpus import build_corpus
from analysis.params import Params, SaeParams
from analysis.prompts import prepare_prompt
from analysis.sae_methods import (collect_activations, decoder_directions, direct_logit_effects, evaluate_sae,
                                  final_latents, final_norm_scale, train_topk_sae)
from analysis.stage import run_stage

STAGE = "sae_seeds"
HEADLINE = ("saes.*.spread.*", "saes.*.runs.*.matched", "saes.*.n_named_holding")


class SeedRun(Schema):
    seed: int
    quality: saes.Quality
    matched: Prob  # of the first seed's live latents, the share with a match at or above the threshold
    top_kept: int  # of the first seed's top latents on the prompt, how many have their match in this seed's top


class LatentMatch(Schema):
    seed: int
    latent: int  # the best match in this seed
    cosine: float
    activation: float  # at the canonical prompt's final position
    logit_effect: float  # direct effect on the misconception's logit minus the correct answer's


class NamedLatent(Schema):
    latent: int  # in the first seed (the one the paper's other stages use)
    named_by: list[str]
    activation: float
    logit_effect: float
    matches: list[LatentMatch]
    holds: bool  # a match above the threshold in every seed, pushing the logits the same way, active if this is


class SeedsResult(Schema):
    hook: str
    seeds: list[int]  # the first is sae_train's
    threshold: float
    top: int  # top latents by activation compared
    runs: list[SeedRun]  # the other seeds
    spread: dict[str, float]  # per quality number: largest minus smallest over every seed
    named: list[NamedLatent]
    n_named_holding: int


class Untested(Schema):
    """A pretrained SAE: there is no training seed to vary, so its latents stay untested."""

    source: str  # the release and id sae_train loaded (its source.json)
    named: list[int]  # the latents the sae and patching stages name


class SaeSeedsMetrics(StageResults):
    model: Name
    saes: dict[Name, SeedsResult]  # the trained SAEs
    untested: dict[Name, Untested]  # the pretrained ones


# --- compute ---------------------------------------------------------------------------

def best_matches(first: Float[Tensor, "d_sae d_in"], other: Float[Tensor, "d_other d_in"]
                 ) -> tuple[Int[Tensor, "d_sae"], Float[Tensor, "d_sae"]]:
    """For each latent of the first SAE, the latent of the other whose unit decoder
    direction is closest (cosine), and that cosine."""
    cosine, index = (first @ other.T).max(-1)
    return index, cosine


@torch.no_grad()
def prompt_profile(model, sae, hook: str, tokens: Tensor, plus: int, minus: int, scale: float) -> dict[str, Tensor]:
    """Every latent's unit decoder direction, its activation at the prompt's final position
    and its direct logit effect (plus minus minus)."""
    directions = decoder_directions(sae, list(range(sae.cfg.d_sae)))
    effects = direct_logit_effects(model, directions, scale)
    return {"decoder": directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12),
            "activation": final_latents(model, sae, hook, tokens), "effect": effects[:, plus] - effects[:, minus]}


def named_latents(key: str, name: str, paths: StagePaths) -> dict[int, list[str]]:
    """The latents of SAE `name` that the sae and patching stages name, with who names them
    (their results read as checked JSON: a stage does not import another stage's module)."""
    named: dict[int, list[str]] = {}
    found = read_results(StagePaths(key, "sae", root=paths.root).results)["saes"][name]
    for label, field in (("top by activation", "top_by_activation"), ("top by attribution", "top_by_attribution"),
                         ("top favouring the error", "top_favouring_error")):
        for latent in found[field]:
            named.setdefault(int(latent), []).append(f"sae: {label}")
    sets = read_results(StagePaths(key, "patching", root=paths.root).results)["sets"]
    for set_name, result in sorted(sets.items()):
        for latent in ((result.get("selection") or {}).get("latents") or {}).get(name, []):
            named.setdefault(int(latent), []).append(f"patching {set_name}: ablated")
    return named


def compare_seeds(first: dict, others: dict[int, dict], named: dict[int, list[str]], live: Tensor,
                  threshold: float, top: int) -> tuple[list[SeedRun], list[NamedLatent], dict[str, Tensor]]:
    """Seed runs and named latents from each seed's unit decoder, activation and effect."""
    runs, tensors, matches = [], {}, {}
    first_top = first["activation"].argsort(descending=True)[:top]
    for seed, other in others.items():
        index, cosine = best_matches(first["decoder"], other["decoder"])
        matches[seed] = (index, cosine)
        tensors[f"seed{seed}/match"], tensors[f"seed{seed}/cosine"] = index, cosine
        other_top = set(other["activation"].argsort(descending=True)[:top].tolist())
        runs.append(SeedRun(seed=seed, quality=other["quality"], matched=(cosine[live] >= threshold).double().mean().item(),
                            top_kept=sum(int(index[i]) in other_top for i in first_top.tolist())))
    records = []
    for latent, by in sorted(named.items()):
        found = [LatentMatch(seed=seed, latent=int(index[latent]), cosine=cosine[latent].item(),
                             activation=others[seed]["activation"][index[latent]].item(),
                             logit_effect=others[seed]["effect"][index[latent]].item())
                 for seed, (index, cosine) in matches.items()]
        sign, active = torch.sign(first["effect"][latent]).item(), first["activation"][latent].item() > 0
        holds = all(m.cosine >= threshold and (m.activation > 0 or not active)
                    and torch.sign(torch.tensor(m.logit_effect)).item() == sign for m in found)
        records.append(NamedLatent(latent=latent, named_by=by, activation=first["activation"][latent].item(),
                                   logit_effect=first["effect"][latent].item(), matches=found, holds=holds))
    return runs, records, tensors


def quality_spread(qualities: list[saes.Quality]) -> dict[str, float]:
    fields = [k for k, v in qualities[0].model_dump().items() if isinstance(v, float)]
    return {k: max(getattr(q, k) for q in qualities) - min(getattr(q, k) for q in qualities) for k in fields}


# --- the stage -------------------------------------------------------------------------

def seed_sae(model, params: Params, name: str, spec: SaeParams, paths: StagePaths, corpus, profile,
             first_quality: saes.Quality) -> tuple[SeedsResult, dict[str, Tensor]]:
    settings, own = params.sae_train, params.sae_seeds
    trained = StagePaths(paths.model, saes.STAGE, root=paths.root)
    first_sae = saes.load_sae(paths.model, name, spec, trained.dir, device=model.cfg.device)
    stats = load_tensors(Path(trained.dir) / name / "stats.safetensors", {"firing_rate": (spec.d_sae,)})
    first = profile(first_sae, spec.hook)
    acts = collect_activations(model, corpus.train, spec.hook)
    others = {}
    for seed in own.seeds:
        sae = train_topk_sae(acts, spec.d_sae, settings.k, settings.lr, settings.batch_size, settings.epochs, seed,
                             device=model.cfg.device)
        quality, _ = evaluate_sae(model, sae, spec.hook, corpus.heldout, params)
        others[seed] = {**profile(sae, spec.hook), "quality": quality}
    named = named_latents(paths.model, name, paths)
    runs, records, tensors = compare_seeds(first, others, named, stats["firing_rate"] > 0, own.match_threshold, own.top)
    result = SeedsResult(hook=spec.hook, seeds=[settings.seed, *own.seeds], threshold=own.match_threshold, top=own.top,
                         runs=runs, spread=quality_spread([first_quality, *(r.quality for r in runs)]), named=records,
                         n_named_holding=sum(r.holds for r in records))
    return result, {f"{name}/{k}": v for k, v in tensors.items()}


def run(model, params: Params, key: str, paths: StagePaths) -> SaeSeedsMetrics:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    c = params.sae_train.corpus
    record = saes.load_results(StagePaths(key, saes.STAGE, root=paths.root))  # what sae_train produced
    trained = {n: s for n, s in params.model(key).saes.items() if record.saes[n].source == "trained"}
    corpus = build_corpus(model, c.context_size, c.prose_windows, c.arithmetic_windows, c.heldout_fraction,
                          params.family.max_operand, c.seed, prose_sha256=c.prose_sha256) if trained else None
    prepared = prepare_prompt(model, params.prompt.canonical, params.prompt.answers.model_dump())
    plus, minus = (prepared.answers[n].first_token_id for n in ("misconception", "correct"))
    scale = final_norm_scale(model, prepared.tokens)

    def profile(sae, hook: str):
        return prompt_profile(model, sae, hook, prepared.tokens, plus, minus, scale)

    results, tensors, untested = {}, {}, {}
    for name, spec in params.model(key).saes.items():
        if name in trained:
            results[name], own = seed_sae(model, params, name, spec, paths, corpus, profile, record.saes[name].quality)
            tensors.update(own)
        else:
            loaded = read_results(StagePaths(key, saes.STAGE, root=paths.root).dir / name / "source.json")
            untested[name] = Untested(source=f"{loaded['release']}/{loaded['sae_id']}",
                                      named=sorted(named_latents(key, name, paths)))
    metrics = SaeSeedsMetrics(model=key, saes=results, untested=untested)
    save_tensors(paths.tensors, tensors)
    save_json(paths.results, metrics)
    return metrics


def load_results(paths: StagePaths) -> SaeSeedsMetrics:
    return load_json(paths.results, SaeSeedsMetrics)


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv)


if __name__ == "__main__":
    main()
