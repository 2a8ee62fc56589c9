"""What the data support: each claim of Yamada (2026), tested on this build's results.

Not a DVC stage: the paper (`paper@<model>`) calls `evaluate` on the results it reads,
with the rules' thresholds and the study's own numbers from params.yaml `claims`. Every
claim is a function of the results that returns a `Claim`: the study's statement, the rule
that tests it here, the measurement that decides it, and the verdict.

    python -m analysis.claims --model smollm2-135m   # the table, from the cached results

Verdicts: `reproduced` (the deciding measurement meets the rule); where it meets the rule's
opposite, `refuted` on the study's own model and `not reproduced on this model` on any
other (a claim about GPT-2 small is not refuted by another model); `inconclusive` (an
interval that straddles the threshold); `mixed` (holds in some conditions and is reversed in
others); `not applicable` (this model does not make the error the claim is about, or has
no such component: the measured column says why); `not testable` (these results cannot
test it). Rules return SUPPORTED or CONTRADICTED; `evaluate` names them for the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from analysis.params import ClaimsParams, Params
from analysis.report import Md, ci, head, md, num, p_number, p_text, pct, plain, prob, tok

SUPPORTED, CONTRADICTED, INCONCLUSIVE, MIXED, NOT_APPLICABLE, NOT_TESTABLE = (
    "reproduced", "contradicted", "inconclusive", "mixed", "not applicable", "not testable")
REFUTED, NOT_REPRODUCED = "refuted", "not reproduced on this model"
VERDICTS = (SUPPORTED, NOT_REPRODUCED, REFUTED, INCONCLUSIVE, MIXED, NOT_APPLICABLE, NOT_TESTABLE)
CONDITION_NAMES = {"zero_shot": "zero-shot", "few_shot": "few-shot", "study_context": "after the study's examples"}


@dataclass(frozen=True)
class Claim:
    """Each text is plain (shown literally) or an Md built by report.md (results escaped)."""

    claim: str | Md  # the study's statement
    rule: str | Md  # how it is tested here, thresholds included
    measured: str | Md  # the measurement that decides it
    verdict: str
    key: str = ""  # the rule's function name, set by `evaluate`


@dataclass(frozen=True)
class Results:
    """The results the claims read: one stage's metrics each (the paper's loaded objects)."""

    lens: Any
    heads: Any
    behaviour: Any
    sae: Any
    patching: Any
    seeds: Any = None  # sae_seeds' results, where the build has them


def seeds_summary(r: Results, name: str, latents: list[int]) -> Md:
    """Which of several latents hold in every training seed, in a few words."""
    found = r.seeds.saes.get(name) if r.seeds is not None else None
    records = {n.latent: n for n in found.named} if found else {}
    if not found or not all(l in records for l in latents):
        return md("")
    held = [l for l in latents if records[l].holds]
    if len(held) == len(latents):
        return md(" (each found again in every seed)")
    return md(" (seed-specific{})", md(" but for {}", ", ".join(f"#{l}" for l in held)) if held else "")


def seed_note(r: Results, name: str, latent: int) -> Md:
    """How a latent of SAE `name` fares in the other training seeds: named with its matches
    where it holds in every seed, marked seed-specific where it does not."""
    found = r.seeds.saes.get(name) if r.seeds is not None else None
    record = next((n for n in found.named if n.latent == latent), None) if found else None
    if record is None:
        return md("")
    seeds = ", ".join(str(m.seed) for m in record.matches)
    if record.holds:
        return md(" (found again in seeds {} as {})", seeds, ", ".join(f"#{m.latent}" for m in record.matches))
    return md(" (seed-specific)")  # its best matches, with their cosines, are in the SAE section's table


def above(e, threshold: float = 0.0) -> str:
    """An estimate against a threshold: its interval wholly above (supported), wholly below
    (contradicted), or across it; an exact value (no interval) is compared as it is; no value
    at all (nothing to average) is not testable."""
    if e.mean is None:
        return NOT_TESTABLE
    low, high = (e.mean, e.mean) if e.low is None else (e.low, e.high)
    return SUPPORTED if low > threshold else CONTRADICTED if high < threshold else INCONCLUSIVE


def below(e, threshold: float = 0.0) -> str:
    verdict = above(e, threshold)
    return {SUPPORTED: CONTRADICTED, CONTRADICTED: SUPPORTED}.get(verdict, verdict)


def est(e, fmt: Callable[[float], str] = pct) -> Md:
    """'12.0% [8.1%, 15.5%]', or 'x (exact)' for a whole population; '–' for no value."""
    if e.mean is None:
        return Md("–")
    return md("{} (exact)", fmt(e.mean)) if e.low is None else md("{} {}", fmt(e.mean), ci(e.low, e.high, fmt))


def points(e) -> Md:
    """A change in a rate, in percentage points, with its interval: '−3.1 [−5.0, −1.2] points'."""
    return est(e, lambda x: num(100 * x, 1)) + " points"


def signed(x: float) -> str:
    return num(x, 2)


# --- the model's answer and the logit lens ----------------------------------------------

def canonical_answer(r: Results, c: ClaimsParams, p: Params) -> Claim:
    wrong, right = r.lens.misconception, r.lens.correct
    return Claim(md("The model completes {} with {} rather than {}.", tok(p.prompt.canonical), wrong.text.strip(),
                    right.text.strip()),
                 "whole-answer probability of the misconception above the correct answer's",
                 md("P({}) = {}, P({}) = {}", tok(wrong.text), prob(wrong.answer_prob, 2), tok(right.text),
                    prob(right.answer_prob, 2)),
                 SUPPORTED if wrong.answer_prob > right.answer_prob else CONTRADICTED)


def doubles_contexts(r: Results, c: ClaimsParams, p: Params) -> Claim:
    ex = r.patching.examples
    wrong = r.lens.misconception.text.strip()
    return Claim(md("The error is not one prompt's: examples of doubles lead the model to {}.", wrong),
                 md("greedy answer {} after the contexts of two doubles in the study's format, the rate's interval "
                    "over contexts above {}", wrong, pct(c.majority, 0)),
                 md("{} of {} contexts", est(ex.error_rate), ex.n_contexts), above(ex.error_rate, c.majority))


def _errs_on_canonical(r: Results) -> bool:
    return r.lens.misconception.answer_prob > r.lens.correct.answer_prob


def _not_erring(r: Results) -> str:
    return md("this model prefers {} on the canonical prompt: the lens of an error it does not make",
              r.lens.correct.text.strip())


def lens_correct_low(r: Results, c: ClaimsParams, p: Params) -> Claim:
    right = r.lens.correct
    peak = max(right.prob_by_layer)
    text = f"The correct answer stays below {pct(c.study.correct_lens_max)} at every layer (logit lens)."
    rule = "highest lens probability of the correct answer's first token, over layers, below that bound"
    if not _errs_on_canonical(r):
        return Claim(text, rule, md("{} ({} at layer {})", _not_erring(r), prob(peak, 2), right.peak_layer),
                     NOT_APPLICABLE)
    return Claim(text, rule, md("{} at layer {} ({})", prob(peak, 2), right.peak_layer, tok(right.first_token)),
                 SUPPORTED if peak < c.study.correct_lens_max else CONTRADICTED)


def lens_late(r: Results, c: ClaimsParams, p: Params) -> Claim:
    wrong, n = r.lens.misconception, r.lens.n_layers
    first, last = c.study.misconception_layers
    text = f"The misconception rises in the late layers (GPT-2 small: layers {first}–{last} of {c.study.n_layers})."
    rule = f"its lens probability peaks at or after {pct(c.late_layers, 0)} of the depth"
    measured = md("peaks at layer {} of {} ({})", wrong.peak_layer, n, prob(max(wrong.prob_by_layer), 2))
    if not _errs_on_canonical(r):
        return Claim(text, rule, md("{}; {}", _not_erring(r), measured), NOT_APPLICABLE)
    return Claim(text, rule, measured, SUPPORTED if wrong.peak_layer >= c.late_layers * (n - 1) else CONTRADICTED)


# --- heads ------------------------------------------------------------------------------

def named_head(r: Results, c: ClaimsParams, p: Params) -> Claim:
    cfg = r.heads.configured_head
    study = c.study
    text = (f"Head {head(study.head.layer, study.head.head)} attends to the previous answer "
            f"({num(study.head_to_previous_answer, 3)}) and not to the current operand ({num(study.head_to_operand, 4)}).")
    rule = (f"on the canonical prompt, attention to the previous answer at least {num(c.attends, 2)} and to the "
            f"query's operands below {num(c.operand_attention, 2)}")
    if cfg is None:
        return Claim(text, rule, "no head is named for this model (the study's is a head of GPT-2 small)",
                     NOT_TESTABLE)
    attends, ignores = cfg.to_previous_answer >= c.attends, cfg.to_current_operands < c.operand_attention
    named = f"Head {head(cfg.layer, cfg.head)}"
    return Claim(text.replace(f"Head {head(study.head.layer, study.head.head)}", named), rule,
                 f"{num(cfg.to_previous_answer, 3)} to the previous answer, {num(cfg.to_current_operands, 4)} to "
                 f"the operands; rank {cfg.rank_by_family_attention} by attention over the family",
                 SUPPORTED if attends and ignores else CONTRADICTED if not attends else INCONCLUSIVE)


def _attending(r: Results, c: ClaimsParams) -> list:
    return [h for h in r.heads.top_heads if h.family_low >= c.attends]


def head_attends(r: Results, c: ClaimsParams, p: Params) -> Claim:
    top = r.heads.top_heads[0]
    fam = r.heads.context_answer_attention_family
    verdict = (SUPPORTED if top.family_low >= c.attends else CONTRADICTED if top.family_high < c.attends
               else INCONCLUSIVE)
    return Claim("A head attends from the final position to the previous example's answer.",
                 f"the strongest head's mean attention over the family, its interval's lower end at least "
                 f"{num(c.attends, 2)}",
                 md("{}: {} {} over {} prompts", head(top.layer, top.head), num(top.family_mean, 3),
                    ci(top.family_low, top.family_high, lambda x: num(x, 3)), fam.n_prompts), verdict)


def head_copies(r: Results, c: ClaimsParams, p: Params) -> Claim:
    """Attending is not copying: a head that attends must also push the copy over the right answer."""
    hd = r.heads
    rule = ("a head that attends (as above), the top induction head, or a head an error set's selection half "
            "chose raises logit(copy) − logit(correct) directly: its copy DLA interval over the family above 0 "
            f"({hd.copy_dla_family.n_prompts} prompts whose copy is one token)")
    text = "That head copies the previous answer into the prediction."
    candidates = [(h.layer, h.head) for h in _attending(r, c)]
    candidates.append((hd.top_induction_head.layer, hd.top_induction_head.head))
    candidates += [_parse_head(n) for s in _causal_sets(r) for n in s.selection.chosen_heads]
    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        return Claim(text, rule, "no head attends, induces or was chosen", CONTRADICTED)
    dla = hd.copy_dla_family
    scored = [((l, h), dla.mean[l][h], dla.low[l][h], dla.high[l][h]) for l, h in candidates]
    copying = [s for s in scored if s[2] > 0]
    rest = [head(*lh) for lh, *_ in scored if lh not in {s[0] for s in copying}]
    measured = md("copy DLA interval above 0: {}{}",
                  Md("; ").join(md("{} {} {}", head(*lh), num(m, 2), ci(lo, hi, signed)) for lh, m, lo, hi in copying)
                  if copying else "no head",
                  md("; not for {}", ", ".join(rest)) if rest else "")
    verdict = (SUPPORTED if any(lo > 0 for *_, lo, _ in scored) else
               CONTRADICTED if all(hi < 0 for *_, hi in scored) else INCONCLUSIVE)
    return Claim(text, rule, measured, verdict)


def induction_copies(r: Results, c: ClaimsParams, p: Params) -> Claim:
    hd = r.heads
    rule = (f"a head with induction score at least {num(c.induction_score, 2)}, zeroed or mean-ablated, lowers "
            "the first-token probability of the copy over the family (interval below 0)")
    text = "The copying head is an induction head: removing it lowers the copy."
    ablated = [a for a in hd.ablations if hd.induction_score[a.layer][a.head] >= c.induction_score]
    if not ablated:
        return Claim(text, rule, "no head with that induction score was ablated", NOT_TESTABLE)
    measured = Md("; ").join(
        md("{} (induction {}): ΔP(copy) {}, ΔP(correct) {}", head(a.layer, a.head),
           num(hd.induction_score[a.layer][a.head], 2), est(a.family["copy"], lambda x: num(x, 3)),
           est(a.family["correct"], lambda x: num(x, 3)))
        for a in ablated)
    verdicts = [below(a.family["copy"]) for a in ablated]
    verdict = SUPPORTED if SUPPORTED in verdicts else CONTRADICTED if set(verdicts) == {CONTRADICTED} else INCONCLUSIVE
    return Claim(text, rule, measured, verdict)


def _causal_sets(r: Results) -> list:
    """The error sets with a selection and an evaluation half (the model errs often enough)."""
    return [s for s in r.patching.sets.values() if s.evaluation is not None]


def _parse_head(node: str) -> tuple[int, int]:
    layer, h = node[1:].split("H")
    return int(layer), int(h)


def _ablation_verdict(delta, control, c: ClaimsParams) -> str:
    """Lowers LD (paired interval below 0, p < alpha) and beats the random draws on both the
    LD and the error rate."""
    if below(delta) == SUPPORTED and delta.p_value < c.alpha and control.p_ld < c.alpha and control.p_error < c.alpha:
        return SUPPORTED
    return CONTRADICTED if above(delta) == SUPPORTED else INCONCLUSIVE


def _combined(verdicts: list[str]) -> str:
    return SUPPORTED if SUPPORTED in verdicts else CONTRADICTED if set(verdicts) == {CONTRADICTED} else INCONCLUSIVE


def head_ablation_error(r: Results, c: ClaimsParams, p: Params) -> Claim:
    text = f"Removing the copying head lowers the error (study: {num(100 * c.study.head_ablation, 1)} points)."
    rule = ("on the evaluation half of an error set, mean-ablating the heads its selection half chose lowers the "
            f"logit difference (paired interval below 0, sign-flip p < {num(c.alpha, 2)}), more than layer-matched "
            f"random heads do for the logit difference and for the error rate (each p < {num(c.alpha, 2)})")
    sets = [s for s in _causal_sets(r) if s.evaluation.control.draws]
    if not sets:
        why = ("no error set has chosen heads" if _causal_sets(r) else
               "the model errs on no error set often enough for a held-out test")
        return Claim(text, rule, why, NOT_APPLICABLE)
    parts, verdicts = [], []
    for s in sets:
        ev = s.evaluation
        mean, control = ev.ablation["mean"], ev.control
        parts.append(md("{} set ({} held-out pairs, {} heads): error rate 100% → {}, ΔLD {} (p {}); against {} random "
                        "sets p = {} (LD) and {} (error rate)", s.name, ev.n_pairs, len(s.selection.chosen_heads),
                        est(mean.corrupt.error_rate), est(mean.delta_ld, signed), p_text(mean.delta_ld.p_value),
                        control.draws, p_number(control.p_ld), p_number(control.p_error)))
        verdicts.append(_ablation_verdict(mean.delta_ld, control, c))
    return Claim(text, rule, Md("; ").join(parts), _combined(verdicts))


# --- SAE features -----------------------------------------------------------------------

def feature_promotes(r: Results, c: ClaimsParams, p: Params) -> list[Claim]:
    sa, out = r.sae, []
    wrong, right = sa.answers["misconception"], sa.answers["correct"]  # first distinguishing tokens
    for name, s in sa.saes.items():
        text = md("An SAE feature promotes {} and suppresses {} ({}; study: {} and {} logits).",
                  r.lens.misconception.text.strip(), r.lens.correct.text.strip(), name,
                  num(c.study.feature_logit_misconception, 1), num(c.study.feature_logit_correct, 1))
        rule = ("of all latents, the one whose attribution favours the misconception most has a direct logit "
                "contribution above 0 to the misconception and below 0 to the correct answer")
        if not s.top_favouring_error:
            out.append(Claim(text, rule, f"no latent of {s.d_sae} favours the misconception", CONTRADICTED))
            continue
        f = s.features[str(s.top_favouring_error[0])]
        up, down = f.logit_contribution["misconception"], f.logit_contribution["correct"]
        out.append(Claim(text, rule, md("#{}{} (attribution {}): {} logits to {}, {} to {}", f.id, seed_note(r, name, f.id),
                                        num(f.attribution, 2), num(up, 2), tok(wrong), num(down, 2), tok(right)),
                         SUPPORTED if up > 0 > down else CONTRADICTED))
    return out


def feature_ablation(r: Results, c: ClaimsParams, p: Params) -> list[Claim]:
    out = []
    for name in r.sae.saes:
        text = md("Ablating that feature lowers the error (study: {} points) ({}).", num(100 * c.study.feature_ablation, 1),
                  name)
        rule = ("on the evaluation half of an error set, zero-ablating the latents the selection half ranks as "
                f"favouring the error most lowers the logit difference (paired interval below 0, p < {num(c.alpha, 2)}), "
                f"more than random latents of matched activation do for the LD and the error rate (each p < "
                f"{num(c.alpha, 2)})")
        effects = [(s, e) for s in _causal_sets(r) for e in s.evaluation.latents if e.sae == name]
        if not effects:
            out.append(Claim(text, rule, "the model errs on no error set often enough for a held-out test",
                             NOT_APPLICABLE))
            continue
        measured = Md("; ").join(md("{} set, latents {}{}: error rate 100% → {}, ΔLD {} (p {}); random latents p = {} "
                                    "(LD), {} (error rate)", s.name, ", ".join(f"#{l}" for l in e.latents),
                                    seeds_summary(r, name, e.latents),
                                    est(e.ablation.corrupt.error_rate), est(e.ablation.delta_ld, signed),
                                    p_text(e.ablation.delta_ld.p_value), p_number(e.control.p_ld),
                                    p_number(e.control.p_error)) for s, e in effects)
        verdicts = [_ablation_verdict(e.ablation.delta_ld, e.control, c) for _, e in effects]
        out.append(Claim(text, rule, measured, _combined(verdicts)))
    return out


def reported_feature(r: Results, c: ClaimsParams, p: Params) -> list[Claim]:
    text = (f"The study's feature #{c.study.feature} is active at the final position (activation "
            f"{num(c.study.feature_activation, 1)}).")
    rule = "the reported latent's activation on the canonical prompt above 0"
    out = []
    for name, s in r.sae.saes.items():
        for fid in s.reported:
            f = s.features[str(fid)]
            out.append(Claim(text.replace(f"#{c.study.feature}", f"#{fid}").rstrip(".") + f" ({name}).", rule,
                             f"activation {num(f.activation, 2)} (rank {f.activation_rank} of {s.d_sae})",
                             SUPPORTED if f.activation > 0 else CONTRADICTED))
    return out or [Claim(text, rule, "the study's feature is a latent of GPT-2 small's SAEs; this model has none",
                         NOT_TESTABLE)]


# --- behaviour --------------------------------------------------------------------------

def errors_few_shot(r: Results, c: ClaimsParams, p: Params) -> Claim:
    bh = r.behaviour
    zero, few = bh.conditions["zero_shot"], bh.conditions["few_shot"]
    diff = bh.error_vs_zero_shot["few_shot"]
    return Claim(f"Errors are rare zero-shot ({pct(c.study.error_zero_shot)}) and common few-shot "
                 f"({pct(c.study.error_few_shot)}).",
                 "few-shot minus zero-shot error probability on the same queries, paired by context, above 0",
                 md("zero-shot {}, few-shot {}; difference {}", est(zero.error_prob["all"]), est(few.error_prob["all"]),
                    points(diff)), above(diff))


def carry_harder(r: Results, c: ClaimsParams, p: Params) -> Claim:
    conditions = {k: r.behaviour.conditions[k] for k in CONDITION_NAMES if k in r.behaviour.conditions}
    verdicts = {k: above(v.carry_gap) for k, v in conditions.items()}
    found = set(verdicts.values())
    found.discard(NOT_TESTABLE)  # a condition with no sum on one side of the carry
    verdict = (NOT_TESTABLE if not found else SUPPORTED if found == {SUPPORTED} else CONTRADICTED
               if found == {CONTRADICTED} else MIXED if {SUPPORTED, CONTRADICTED} <= found else INCONCLUSIVE)
    return Claim("Sums with a carry are harder.",
                 "accuracy without a carry minus with one above 0 in every condition (few-shot: interval over "
                 "contexts; a single context: exact over the grid)",
                 Md("; ").join(md("{} {}", CONDITION_NAMES[k], points(v.carry_gap)) for k, v in conditions.items()),
                 verdict)


def nine_plus_nine(r: Results, c: ClaimsParams, p: Params) -> Claim:
    item = r.behaviour.conditions["few_shot"].items.get("9 + 9")
    text = f"The carry sum 9 + 9 is answered wrong most of the time (study: {pct(c.study.error_nine_plus_nine)} error)."
    rule = f"few-shot error probability of 9 + 9, its interval over contexts above {pct(c.majority, 0)}"
    if item is None:
        return Claim(text, rule, "9 + 9 is outside this build's operands", NOT_TESTABLE)
    return Claim(text, rule, md("{} over {} contexts", est(item.error_prob), len(item.answers)),
                 above(item.error_prob, c.majority))


def sequence_errors(r: Results, c: ClaimsParams, p: Params) -> Claim:
    few = r.behaviour.conditions["few_shot"]
    seq, chance = few.classes["sequence"], few.chance["sequence"]
    text = "Wrong answers continue the examples' arithmetic sequence (the study's explanation of the error)."
    rule = "few-shot: the share of wrong answers that do, its interval over contexts above the chance rate"
    if seq.mean is None:
        return Claim(text, rule, "the model makes no few-shot error", NOT_TESTABLE)
    return Claim(text, rule, md("{} of {} wrong answers; chance {}", est(seq), few.n_wrong, pct(chance)),
                 above(seq, chance))


def examples_not_frequency(r: Results, c: ClaimsParams, p: Params) -> Claim:
    ex, fq = r.patching.examples, r.behaviour.frequency
    alone = ex.p["without_examples"]["misconception"]
    wrong = r.lens.misconception.text
    prior = fq.prior[fq.numbers.index(fq.misconception)]
    return Claim(md("The examples, not the frequency of {}, make it likely.", wrong.strip()),
                 md("P({}) after the contexts of two doubles, its interval over contexts above its probability after "
                    "the query alone", tok(wrong)),
                 md("prior {}, query alone {}, after examples {}", prob(prior, 2), prob(alone, 2),
                    est(ex.p_misconception, lambda x: prob(x, 2))), above(ex.p_misconception, alone))


def spacing(r: Results, c: ClaimsParams, p: Params) -> Claim:
    sp = r.patching.examples.spacing
    rule = (f"the contexts of two doubles written with and without spaces: the share of correct greedy answers "
            f"differs (exact McNemar p < {num(c.alpha, 2)}: the claim is not reproduced); a larger p shows no "
            "difference but not equivalence")
    measured = md("correct {} with spaces, {} without, over the same {} contexts (McNemar p {})",
                  est(sp.spaced.correct_rate), est(sp.unspaced.correct_rate), sp.spaced.correct_rate.n,
                  p_text(sp.p_value))
    return Claim("Spacing does not change the behaviour.", rule, measured,
                 CONTRADICTED if sp.p_value < c.alpha else INCONCLUSIVE)


CLAIMS: tuple[Callable[..., Claim | list[Claim]], ...] = (
    canonical_answer, doubles_contexts, lens_correct_low, lens_late, named_head, head_attends, head_copies,
    induction_copies, head_ablation_error, feature_promotes, feature_ablation, reported_feature, errors_few_shot,
    carry_harder, nine_plus_nine, sequence_errors, examples_not_frequency, spacing)


def evaluate(results: Results, params: Params) -> list[Claim]:
    """Every claim, CONTRADICTED named `refuted` on the study's model (results.lens.model is
    params.claims.study.model) and `not reproduced on this model` on any other."""
    opposite = REFUTED if results.lens.model == params.claims.study.model else NOT_REPRODUCED
    out: list[Claim] = []
    for rule in CLAIMS:
        made = rule(results, params.claims, params)
        out.extend(replace(c, key=rule.__name__, verdict=opposite if c.verdict == CONTRADICTED else c.verdict)
                   for c in (made if isinstance(made, list) else [made]))
    return out


def load(model: str, data_root) -> Results:
    from analysis import behaviour, heads, logit_lens, patching, sae, sae_seeds
    from analysis.artifacts import StagePaths

    def paths(stage: str) -> StagePaths:
        return StagePaths(model, stage, root=data_root)

    return Results(logit_lens.load_results(paths("logit_lens"))[0], heads.load_results(paths("heads"))[0],
                   behaviour.load_results(paths("behaviour"))[0], sae.load_results(paths("sae")),
                   patching.load_results(paths("patching")), sae_seeds.load_results(paths("sae_seeds")))


def main(argv: list[str] | None = None) -> None:
    from pathlib import Path

    from analysis.params import exit_on_params_error, load_params, parse_model_arg

    model, _ = parse_model_arg("claims", argv)
    with exit_on_params_error():
        params = load_params()
    for claim in evaluate(load(model, Path("data")), params):
        print(f"[{claim.verdict}] {plain(claim.claim)}\n    rule: {plain(claim.rule)}\n    measured: {plain(claim.measured)}")


if __name__ == "__main__":
    sys.exit(main())
