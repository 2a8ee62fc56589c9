"""params.yaml: its schema, and the one check every stage runs before any heavy work.

`load_params()` reads the whole file and validates every section, whichever stage asks:
a typo in a section that a later stage reads fails the first stage, not ten minutes in.
Errors are raised as `ParamsError`, whose message names the field, the bad value and what
is allowed; `exit_on_params_error` turns it into one message on stderr and exit status 2.

    python -m analysis.params            # check params.yaml and exit
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from analysis.prompts import parse_arithmetic

PARAMS_FILE = Path("params.yaml")

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Text = Annotated[str, Field(strict=True)]


class ParamsError(ValueError):
    """A params.yaml field with a value the pipeline cannot use."""

    def __init__(self, field: str, value: Any, allowed: str, source: Path = PARAMS_FILE):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{source}: {field} = {value!r}: {allowed}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shape(Section):
    """The dimensions a model must have; checked before loading and again after."""

    n_layers: PositiveInt
    n_heads: PositiveInt
    d_model: PositiveInt
    d_vocab: PositiveInt


class HeadRef(Section):
    layer: NonNegativeInt
    head: NonNegativeInt


SAE_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out)$")


class SaeParams(Section):
    source: Literal["trained", "pretrained"]
    hook: Text  # a residual-width hook point, e.g. blocks.9.hook_resid_pre
    d_in: PositiveInt
    d_sae: PositiveInt
    release: Text | None = None  # pretrained: sae_lens release and id
    sae_id: Text | None = None
    neuronpedia: Text | None = None  # Neuronpedia's id for the release, e.g. gpt2-small/9-res-jb
    report_features: list[NonNegativeInt] = []  # latents always reported, e.g. the study's 1076


class ModelParams(Section):
    label: Text
    source: Literal["gguf_wheel", "hub"]
    package: Text | None = None
    gguf_file: Text | None = None
    hub_name: Text | None = None
    prepend_bos: Annotated[bool, Field(strict=True)]
    shape: Shape
    configured_head: HeadRef | None = None
    saes: dict[str, SaeParams] = {}


class Answers(Section):
    correct: Text
    misconception: Text


class PromptParams(Section):
    canonical: Text
    control: Text
    answers: Answers


class FamilyParams(Section):
    n_prompts: Annotated[int, Field(strict=True, ge=2)]
    n_shots: PositiveInt
    max_operand: PositiveInt
    seed: NonNegativeInt


class StatsParams(Section):
    bootstrap_resamples: Annotated[int, Field(strict=True, ge=100)]
    ci_level: Annotated[float, Field(strict=True, gt=0, lt=1)]


class LogitLensParams(Section):
    top_k: PositiveInt


class InductionParams(Section):
    n_sequences: PositiveInt
    half_length: Annotated[int, Field(strict=True, ge=2)]


class HeadsParams(Section):
    induction: InductionParams
    top_k: PositiveInt
    ablation: Literal["zero", "mean"]


class BehaviourParams(Section):
    max_operand: PositiveInt
    n_shots: PositiveInt
    n_contexts: PositiveInt
    context_seed: NonNegativeInt
    max_answer_tokens: PositiveInt
    neutral_contexts: Annotated[list[Text], Field(min_length=1)]


class SaeCorpusParams(Section):
    context_size: Annotated[int, Field(strict=True, ge=8)]
    prose_windows: PositiveInt
    arithmetic_windows: PositiveInt
    heldout_fraction: Annotated[float, Field(strict=True, gt=0, lt=0.5)]
    seed: NonNegativeInt


class SaeTrainingParams(Section):
    k: PositiveInt  # latents active per token (TopK)
    lr: Annotated[float, Field(strict=True, gt=0)]
    batch_size: PositiveInt
    epochs: PositiveInt
    seed: NonNegativeInt
    corpus: SaeCorpusParams


class SaeAnalysisParams(Section):
    top_k: PositiveInt
    ablation: Literal["zero", "mean"]
    attribution_metric: Literal["logit_diff", "prob_diff"]
    top_tokens: PositiveInt
    spacing_variants: Annotated[dict[str, Text], Field(min_length=1)]


class PaperParams(Section):
    date: Text

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("an ISO 8601 date and time, such as 2026-11-24T00:00:00Z") from None
        return value


class Params(Section):
    seed: NonNegativeInt
    models: dict[str, ModelParams]
    prompt: PromptParams
    family: FamilyParams
    stats: StatsParams
    logit_lens: LogitLensParams
    heads: HeadsParams
    behaviour: BehaviourParams
    sae_training: SaeTrainingParams
    sae: SaeAnalysisParams
    paper: PaperParams

    def model(self, key: str) -> ModelParams:
        if key not in self.models:
            raise ParamsError("models", key, f"unknown model; params.yaml declares {sorted(self.models)}")
        return self.models[key]


def _describe(error: dict[str, Any]) -> tuple[str, Any, str]:
    """(field path, bad value, what is allowed) from one pydantic error."""
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        return ".".join(loc), error["input"], f"unknown field{' in ' + parent if parent else ''}; remove it or fix its name"
    if kind == "missing":
        return ".".join(loc), None, "missing; this field is required"
    message = error["msg"].removeprefix("Value error, ")
    return ".".join(loc), error.get("input"), message


def _check_sae(params: Params, field: str, sae: SaeParams, shape: Shape) -> None:
    match = SAE_HOOK.match(sae.hook)
    if not match:
        raise ParamsError(f"{field}.hook", sae.hook, "a residual-width hook: blocks.<layer>.hook_resid_pre, "
                          "hook_resid_mid, hook_resid_post, hook_mlp_out or hook_attn_out")
    if int(match.group(1)) >= shape.n_layers:
        raise ParamsError(f"{field}.hook", sae.hook, f"a block in 0..{shape.n_layers - 1}")
    if sae.d_in != shape.d_model:
        raise ParamsError(f"{field}.d_in", sae.d_in, f"{shape.d_model}, the width of {sae.hook} (d_model)")
    if sae.source == "pretrained":
        for name in ("release", "sae_id"):
            if not getattr(sae, name):
                raise ParamsError(f"{field}.{name}", getattr(sae, name), "required for a pretrained SAE")
    elif params.sae_training.k >= sae.d_sae:
        raise ParamsError("sae_training.k", params.sae_training.k, f"fewer than the SAE's d_sae ({sae.d_sae})")
    for feature in sae.report_features:
        if feature >= sae.d_sae:
            raise ParamsError(f"{field}.report_features", feature, f"a latent index in 0..{sae.d_sae - 1}")


def _check_consistency(params: Params) -> None:
    """Checks that span fields: what pydantic's per-field types cannot say."""
    if not params.models:
        raise ParamsError("models", {}, "declare at least one model")
    for key, model in params.models.items():
        field = f"models.{key}"
        required = {"gguf_wheel": ("package", "gguf_file"), "hub": ("hub_name",)}[model.source]
        for name in required:
            if not getattr(model, name):
                raise ParamsError(f"{field}.{name}", getattr(model, name),
                                  f"required (a non-empty string) when source is {model.source!r}")
        shape = model.shape
        if model.configured_head is not None:
            head = model.configured_head
            if head.layer >= shape.n_layers:
                raise ParamsError(f"{field}.configured_head.layer", head.layer,
                                  f"a layer in 0..{shape.n_layers - 1} ({key} has {shape.n_layers} layers)")
            if head.head >= shape.n_heads:
                raise ParamsError(f"{field}.configured_head.head", head.head,
                                  f"a head in 0..{shape.n_heads - 1} ({key} has {shape.n_heads} heads per layer)")
        for name, sae in model.saes.items():
            _check_sae(params, f"{field}.saes.{name}", sae, shape)
        if params.heads.top_k > shape.n_layers * shape.n_heads:
            raise ParamsError("heads.top_k", params.heads.top_k,
                              f"at most {shape.n_layers * shape.n_heads}, the number of heads of {key}")

    prompt = params.prompt
    for name in ("canonical", "control"):
        text = getattr(prompt, name)
        try:
            parsed = parse_arithmetic(text)
        except ValueError as exc:
            raise ParamsError(f"prompt.{name}", text, f"examples 'a + b = c.' then the query 'x + y =' ({exc})") from None
        if name == "canonical" and not parsed.shots:
            raise ParamsError("prompt.canonical", text, "at least one solved example before the query")
        if name == "control" and parsed.shots:
            raise ParamsError("prompt.control", text, "the query alone, with no examples (e.g. '5 + 5 =')")
    answers = prompt.answers.model_dump()
    for name, text in answers.items():
        if not text.strip():
            raise ParamsError(f"prompt.answers.{name}", text, "a non-empty answer string such as ' 10'")
    if answers["correct"].strip() == answers["misconception"].strip():
        raise ParamsError("prompt.answers.misconception", answers["misconception"],
                          f"an answer different from prompt.answers.correct ({answers['correct']!r})")
    for name, text in answers.items():
        if not text.strip().isdigit():
            raise ParamsError(f"prompt.answers.{name}", text, "a number written as text, such as ' 10'")
    for section in ("family", "behaviour"):
        bound = getattr(params, section).max_operand
        if bound > 99:
            raise ParamsError(f"{section}.max_operand", bound, "an operand bound in 1..99")
    behaviour = params.behaviour
    digits = len(str(2 * behaviour.max_operand))
    if behaviour.max_answer_tokens < digits + 1:
        raise ParamsError("behaviour.max_answer_tokens", behaviour.max_answer_tokens,
                          f"at least {digits + 1}: answers up to {2 * behaviour.max_operand} can take {digits} "
                          "digit tokens, and one more shows where the number ends")
    canonical = parse_arithmetic(prompt.canonical)
    for name, text in params.sae.spacing_variants.items():
        try:
            variant = parse_arithmetic(text)
        except ValueError as exc:
            raise ParamsError(f"sae.spacing_variants.{name}", text, f"the canonical prompt in another spacing ({exc})") from None
        if (variant.shots, variant.query) != (canonical.shots, canonical.query):
            raise ParamsError(f"sae.spacing_variants.{name}", text,
                              f"the same sums as prompt.canonical ({prompt.canonical!r}), spaced differently")
    for i, text in enumerate(behaviour.neutral_contexts):
        if not text.strip() or "=" in text:
            raise ParamsError(f"behaviour.neutral_contexts[{i}]", text, "a non-empty text that asks for no sum")


def validate_params(raw: Any, source: Path = PARAMS_FILE) -> Params:
    """The whole params mapping, validated; raises ParamsError on the first problem."""
    if not isinstance(raw, dict):
        raise ParamsError("(top level)", raw, "a YAML mapping of sections", source)
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        field, value, allowed = _describe(exc.errors()[0])
        raise ParamsError(field, value, allowed, source) from None
    try:
        _check_consistency(params)
    except ParamsError as exc:
        raise ParamsError(exc.field, exc.value, exc.allowed, source) from None
    return params


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError("(file)", str(path), "params.yaml not found; run from the repository root") from None
    except yaml.YAMLError as exc:
        raise ParamsError("(file)", str(path), f"not valid YAML: {exc}") from None
    return validate_params(raw, path)


@contextmanager
def exit_on_params_error() -> Iterator[None]:
    """Turn a ParamsError into one line on stderr and exit status 2 (for main())."""
    try:
        yield
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    with exit_on_params_error():
        params = load_params()
    print(f"{PARAMS_FILE}: valid ({', '.join(params.models)})")


if __name__ == "__main__":
    main()
