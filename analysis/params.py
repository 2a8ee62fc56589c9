"""params.yaml: its schema, and the one check every stage runs before any heavy work.

`load_params()` reads the whole file and validates every section, whichever stage asks:
a typo in a section that a later stage reads fails the first stage, not ten minutes in.
Errors are raised as `ParamsError`, whose message names the field, the bad value and what
is allowed; `exit_on_params_error` turns it into one message on stderr and exit status 2.

    python -m analysis.params            # check params.yaml and exit
"""

from __future__ import annotations

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


class ModelParams(Section):
    label: Text
    source: Literal["gguf_wheel", "hub"]
    package: Text | None = None
    gguf_file: Text | None = None
    hub_name: Text | None = None
    prepend_bos: Annotated[bool, Field(strict=True)]
    shape: Shape
    configured_head: HeadRef | None = None


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


class BehaviourParams(Section):
    max_operand: PositiveInt
    n_shots: PositiveInt
    n_contexts: PositiveInt
    context_seed: NonNegativeInt
    max_answer_tokens: PositiveInt
    neutral_contexts: Annotated[list[Text], Field(min_length=1)]


class PaperParams(Section):
    date: Text

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        datetime.fromisoformat(value)
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
