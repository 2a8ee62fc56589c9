"""params.yaml: its schema, the stages it drives, and the check every stage runs first.

Each analysis stage is one section class here with a `stage` entry (a `StageSpec`): the
shared sections it reads, the other stages' outputs it reads, and what it writes.
`analysis/pipeline.py` writes dvc.yaml from these entries and the modules' imports, so a
new stage is its module, its section in params.yaml, its section class here and its
section of the paper (README: "Adding an analysis").

`load_params()` reads the whole file and validates every section, whichever stage asks:
a typo in a section that a later stage reads fails the first stage, not ten minutes in.
Errors are raised as `ParamsError`, whose message names the field, the bad value and what
is allowed; `exit_on_params_error` turns it into one message on stderr and exit status 2.

    python -m analysis.params            # check params.yaml and exit
"""

from __future__ import annotations

import argparse
import difflib
import re
import reprlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PARAMS_FILE = Path("params.yaml")

MAX_PROMPTS = 100_000  # every count and size: beyond this, memory and time run out on a laptop
PositiveInt = Annotated[int, Field(strict=True, gt=0, le=MAX_PROMPTS)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0, le=MAX_PROMPTS)]
Width = Annotated[int, Field(strict=True, gt=0, le=2**20)]  # a model's or an SAE's dimensions
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]  # what numpy and torch accept
MAX_TEXT = 10_000  # characters of any string; prompts are held to each model's context too
Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT)]
Probability = Annotated[float, Field(strict=True, ge=0, le=1)]
# A model key or an SAE name becomes a folder under data/: a plain name, never a path.
NAME = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9_-]+)*")
MAX_NAME = 64
MAX_FILE_BYTES = 1 << 20  # params.yaml is a few KB; a megabyte is no params file
MAX_DEPTH = 32  # nesting of mappings and lists; params.yaml needs five


def short(value: Any, width: int = 80) -> str:
    """A bounded repr for messages: long strings, deep or wide structures are cut, so that
    the message stays one short line whatever the value."""
    limits = reprlib.Repr()  # Python 3.11's takes no arguments
    limits.maxlevel, limits.maxdict, limits.maxlist, limits.maxtuple, limits.maxset = 3, 4, 4, 4, 4
    limits.maxstring = limits.maxother = limits.maxlong = width
    text = limits.repr(value).replace("\n", " ")
    if len(text) > width + 10:
        text = text[:width] + "..."
    if isinstance(value, str) and len(value) > width:
        text += f" ({len(value):,} characters)"
    return text


class ParamsError(ValueError):
    """A params.yaml field with a value the pipeline cannot use."""

    def __init__(self, field: str, value: Any, allowed: str, source: Path = PARAMS_FILE):
        self.field, self.value, self.allowed = field, value, allowed
        name = field if len(field) <= 120 else field[:120] + "..."
        allowed = allowed if len(allowed) <= 300 else allowed[:300] + "..."
        super().__init__(f"{source}: {name} = {short(value)}: {allowed}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shape(Section):
    """The dimensions a model must have; checked before loading and again after."""

    n_layers: PositiveInt
    n_heads: PositiveInt
    d_model: Width
    d_vocab: Width
    n_ctx: Width  # the longest input, in tokens: every prompt is checked against it before loading


class HeadRef(Section):
    layer: NonNegativeInt
    head: NonNegativeInt


HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out)$")


def hook_layer(hook: str) -> int:
    """The block of a residual-width hook point: 9 for 'blocks.9.hook_resid_pre'."""
    match = HOOK.match(hook)
    if not match:
        raise ValueError(f"{hook!r} is not a residual-width block hook such as 'blocks.9.hook_resid_pre'")
    return int(match.group(1))


class SaeParams(Section):
    source: Literal["trained", "pretrained"]
    hook: Text  # a residual-width hook point, e.g. blocks.9.hook_resid_pre
    d_in: Width
    d_sae: Width
    release: Text | None = None  # pretrained: sae_lens release and id
    sae_id: Text | None = None
    neuronpedia: Text | None = None  # Neuronpedia's id for the release, e.g. gpt2-small/9-res-jb
    report_features: Annotated[list[Annotated[int, Field(strict=True, ge=0, le=2**20)]], Field(max_length=100)] = []  # latents always reported, e.g. the study's 1076


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
    spacing_variants: Annotated[dict[str, Text], Field(min_length=1, max_length=20)]  # the canonical prompt spaced otherwise


class FamilyParams(Section):
    n_prompts: Annotated[int, Field(strict=True, ge=2, le=MAX_PROMPTS)]
    n_shots: Annotated[int, Field(strict=True, gt=0, le=20)]
    max_operand: PositiveInt
    seed: Seed


class StatsParams(Section):
    bootstrap_resamples: Annotated[int, Field(strict=True, ge=100, le=MAX_PROMPTS)]  # 10^5 x 2000 floats: 1.6 GB
    ci_level: Annotated[float, Field(strict=True, gt=0, lt=1)]


# --- the stages ------------------------------------------------------------------------

OUTPUTS = {  # what a stage can write, under data/<model>/ (DVC-cached)
    "tensors": "{stage}.safetensors",
    "results": "{stage}.json",
    "dir": "{stage}",
}
# Every stage also writes its headline numbers to metrics/<model>/<stage>.json: a few
# dozen scalars that git tracks (DVC `metrics`, cache: false), so a clone shows them.
METRICS = "metrics/{model}/{stage}.json"


@dataclass(frozen=True)
class Plot:
    """A curve a stage writes to metrics/<model>/<stage>_<name>.csv (git-tracked), which
    dvc.yaml declares as a DVC plot: `dvc plots show`/`diff` draw `y` against `x`."""

    name: str
    x: str
    y: tuple[str, ...]
    title: str


@dataclass(frozen=True)
class StageSpec:
    """How a stage is wired: `python -m analysis.<stage> --model <key>` reads seed,
    models.<key>, its own section and `shared`, and the outputs `reads` of other stages
    ("sae_train:dir"); it writes `writes`, of which the paper reads `paper`."""

    shared: tuple[str, ...]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ("tensors", "results")
    paper: tuple[str, ...] = ("tensors", "results")
    plots: tuple[Plot, ...] = ()
    uses_saes: bool = False  # loads the model's SAEs (a pretrained one from the hub)


def output_path(stage: str, kind: str, model: str) -> str:
    """An output's path from the repository root: output_path('heads', 'results', 'gpt2-small')."""
    return f"data/{model}/" + OUTPUTS[kind].format(stage=stage)


def metrics_path(stage: str, model: str, plot: str | None = None) -> str:
    """A stage's headline metrics, or one of its plots' data (git-tracked), from the
    repository root."""
    path = METRICS.format(model=model, stage=stage)
    return path if plot is None else path.removesuffix(".json") + f"_{plot}.csv"


class LogitLensParams(Section):
    stage: ClassVar = StageSpec(shared=("prompt", "family", "stats"), plots=(
        Plot("layers", "layer", ("correct", "copy"), "Logit lens over the prompt family: mean probability per layer"),))
    top_k: Annotated[int, Field(strict=True, gt=0, le=1000)]  # top tokens listed, far below any vocabulary


class InductionParams(Section):
    n_sequences: PositiveInt
    half_length: Annotated[int, Field(strict=True, ge=2, le=MAX_PROMPTS)]


class HeadsParams(Section):
    stage: ClassVar = StageSpec(shared=("prompt", "family", "stats"), plots=(
        Plot("heads", "head", ("induction_score", "dla"), "Every head (layer-major): induction score and DLA"),))
    induction: InductionParams
    top_k: PositiveInt
    ablation: Literal["zero", "mean"]


class BehaviourParams(Section):
    stage: ClassVar = StageSpec(shared=("prompt", "stats"))
    max_operand: PositiveInt
    n_shots: Annotated[int, Field(strict=True, gt=0, le=20)]
    n_contexts: PositiveInt
    context_seed: Seed
    max_answer_tokens: Annotated[int, Field(strict=True, gt=0, le=16)]
    chat_max_tokens: Annotated[int, Field(strict=True, gt=0, le=64)]
    neutral_contexts: Annotated[list[Text], Field(min_length=1, max_length=100)]


class SaeCorpusParams(Section):
    context_size: Annotated[int, Field(strict=True, ge=8, le=MAX_PROMPTS)]
    prose_windows: PositiveInt
    arithmetic_windows: PositiveInt
    heldout_fraction: Annotated[float, Field(strict=True, gt=0, lt=0.5)]
    seed: Seed
    prose_sha256: Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]  # the shipped prose, pinned


class SaeTrainParams(Section):
    stage: ClassVar = StageSpec(shared=("family",), writes=("dir", "results"), paper=("results",), uses_saes=True)
    k: PositiveInt  # latents active per token (TopK)
    lr: Annotated[float, Field(strict=True, gt=0, le=1)]
    batch_size: PositiveInt
    epochs: Annotated[int, Field(strict=True, gt=0, le=1000)]
    seed: Seed
    corpus: SaeCorpusParams


class SaeAnalysisParams(Section):
    stage: ClassVar = StageSpec(shared=("prompt", "family", "stats"), reads=("sae_train:dir", "sae_train:results"),
                                paper=("results",), uses_saes=True)
    top_k: PositiveInt
    ablation: Literal["zero", "mean"]
    attribution_metric: Literal["logit_diff", "prob_diff"]
    top_tokens: PositiveInt


class ErrorSetParams(Section):
    """One error set: pairs of a corrupt context that should induce the error W and a clean
    one of the same token length with the same query (analysis/arithmetic.py)."""

    kind: Literal["placed", "sequence", "natural"]
    n_shots: Annotated[int, Field(strict=True, gt=0, le=10)] | None = None  # placed: examples per context
    where: list[Annotated[int, Field(strict=True, ge=0, le=9)]] | None = None  # placed: the examples answering W
    error: Literal["last_operand_plus_one"] | None = None  # natural: which wrong answer, from behaviour's contexts
    about: Text  # what the set separates, in one phrase (the paper quotes it)


class PatchingParams(Section):
    stage: ClassVar = StageSpec(shared=("prompt", "stats", "behaviour"), reads=("sae_train:dir", "behaviour:tensors"),
                                paper=("results",), uses_saes=True, plots=(
        Plot("layers", "layer", ("exact", "attribution"), "Patching each layer's MLP output: exact and attribution, "
             "the first causal set's selection half"),))
    sets: Annotated[dict[str, ErrorSetParams], Field(min_length=1, max_length=20)]
    causal: list[Text]  # sets analysed causally, when they reach min_erring erring pairs
    circuit: list[Text]  # of those, the sets whose circuit is found (EAP-IG)
    n_pairs: Annotated[int, Field(strict=True, ge=4, le=MAX_PROMPTS)]  # pairs per set for its behaviour
    min_erring: Annotated[int, Field(strict=True, ge=4, le=MAX_PROMPTS)]  # erring pairs a causal analysis needs
    max_erring: Annotated[int, Field(strict=True, ge=4, le=MAX_PROMPTS)]  # ... and uses at most (the first ones)
    max_pairs: Annotated[int, Field(strict=True, ge=4, le=MAX_PROMPTS)]  # pairs generated per causal set at most
    max_operand: Annotated[int, Field(strict=True, ge=2, le=99)]
    seed: Seed  # the pairs
    split_seed: Seed  # the selection and evaluation halves
    last_positions: PositiveInt  # residual patching at each of the last positions
    resid_layer_stride: PositiveInt  # residual patching at every n-th layer (1: every layer)
    top_heads: PositiveInt  # heads ranked by attribution patching, then patched exactly (all: exhaustive_heads)
    exhaustive_heads: Annotated[bool, Field(strict=True)]  # patch every head exactly (a GPU's job)
    alpha: Annotated[float, Field(strict=True, gt=0, lt=1)]  # Holm-adjusted p below this chooses a component
    min_effect: Annotated[float, Field(strict=True, gt=0)]  # and its normalised effect at least this
    min_gap: Annotated[float, Field(strict=True, gt=0)]  # |mean LD gap| below which no effect is normalised
    random_draws: Annotated[int, Field(strict=True, ge=2, le=MAX_PROMPTS)]  # random sets in each control
    draw_rows: PositiveInt  # rows (two per pair) of a control's draws run together
    top_latents: PositiveInt  # SAE latents that most favour the error, ablated together
    latent_match_window: PositiveInt  # their random controls: within this many ranks of mean activation
    eap_ig_pairs: Annotated[int, Field(strict=True, ge=1, le=MAX_PROMPTS)]  # selection pairs EAP-IG scores
    eap_ig_steps: PositiveInt  # integration steps of EAP-IG
    circuit_sizes: Annotated[list[PositiveInt], Field(min_length=1, max_length=20)]  # edges, for faithfulness
    circuit_size: PositiveInt  # the circuit drawn: one of circuit_sizes
    confirm_edges: PositiveInt  # top edges confirmed by exact edge patching


class SaeSeedsParams(Section):
    stage: ClassVar = StageSpec(shared=("prompt", "family", "sae_train"),
                                reads=("sae_train:dir", "sae_train:results", "sae:results", "patching:results"),
                                paper=("results",), uses_saes=True)
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=10)]  # beside sae_train.seed
    match_threshold: Annotated[float, Field(strict=True, gt=0, le=1)]  # decoder cosine that finds a latent again
    top: PositiveInt  # top latents by activation on the prompt whose matches are compared


class StudyFacts(Section):
    """Numbers Yamada (2026) reports, cited beside the measurements that test them."""

    model: Annotated[str, Field(pattern=f"^{NAME.pattern}$", max_length=MAX_NAME)]  # only its build can refute a claim
    correct_lens_max: Probability  # the correct answer's highest logit-lens probability
    misconception_layers: Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]  # where 6 rises
    n_layers: PositiveInt  # GPT-2 small's
    head: HeadRef  # the head it names, L8H6
    head_to_previous_answer: Probability  # L8H6's attention to the previous answer
    head_to_operand: Probability  # and to the current operand
    head_ablation: float  # change in the error rate when L8H6 is removed
    feature: NonNegativeInt  # the SAE feature it reports
    feature_layer: NonNegativeInt  # "layer 9 MLP"
    feature_activation: float
    feature_logit_misconception: float
    feature_logit_correct: float
    feature_ablation: float  # change in the error rate when the feature is ablated
    error_zero_shot: Probability
    error_few_shot: Probability
    error_nine_plus_nine: Probability


class ClaimsParams(Section):
    """The rules that test the study's claims (analysis/claims.py)."""

    alpha: Annotated[float, Field(strict=True, gt=0, lt=1)]  # a p-value below this is an effect
    attends: Probability  # attention (the interval's lower end) that counts as attending
    operand_attention: Probability  # "not to the operand": below this
    induction_score: Annotated[float, Field(strict=True, gt=0, le=1)]  # makes a head an induction head
    late_layers: Probability  # "late layers": at or after this fraction of the depth
    majority: Probability  # "most of the time": a rate above this
    study: StudyFacts


class PaperParams(Section):
    date: Text

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("an ISO 8601 date and time, such as 2026-11-24T00:00:00Z") from None
        if when.tzinfo is None:  # else the PDF's timestamp would depend on the machine's time zone
            raise ValueError("a date and time with its time zone, such as 2026-11-24T00:00:00Z")
        return value


class Tolerance(Section):
    """|committed - recomputed| <= abs + rel * max(|committed|, |recomputed|)."""

    abs: Annotated[float, Field(strict=True, ge=0)]
    rel: Annotated[float, Field(strict=True, ge=0)]


class VerifyParams(Section):
    """`make verify`'s tolerances, per kind of number; integers, flags and labels must be equal."""

    reals: Tolerance  # every real number of a results file (.json)
    tensors: Tolerance  # every element of a floating-point tensor (.safetensors)


class Params(Section):
    seed: Seed
    models: dict[str, ModelParams]
    prompt: PromptParams
    family: FamilyParams
    stats: StatsParams
    # one field per analysis stage, in the order they run; the field's name is the stage's
    logit_lens: LogitLensParams
    heads: HeadsParams
    behaviour: BehaviourParams
    sae_train: SaeTrainParams
    sae: SaeAnalysisParams
    patching: PatchingParams
    sae_seeds: SaeSeedsParams
    claims: ClaimsParams
    paper: PaperParams
    verify: VerifyParams

    def model(self, key: str) -> ModelParams:
        if key not in self.models:
            raise ParamsError("models", key, f"unknown model; params.yaml declares {sorted(self.models)}")
        return self.models[key]


def stages() -> dict[str, StageSpec]:
    """Every analysis stage, in the order of Params' fields: name -> its StageSpec."""
    return {name: field.annotation.stage for name, field in Params.model_fields.items()
            if isinstance(getattr(field.annotation, "stage", None), StageSpec)}


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


def _first_error(exc: ValidationError) -> tuple[str, Any, str]:
    """The error to report: an unknown key before a missing one (a misspelt key is both),
    with the missing name it probably meant."""
    errors = exc.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if not extra:
        return _describe(errors[0])
    field, value, allowed = _describe(extra[0])
    parent = extra[0]["loc"][:-1]
    missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == parent]
    close = difflib.get_close_matches(str(extra[0]["loc"][-1]), missing, n=1)
    return field, value, allowed.replace("remove it or fix its name", f"did you mean {close[0]!r}?") if close else allowed


def validate_params(raw: Any, source: Path = PARAMS_FILE) -> Params:
    """The whole params mapping, validated; raises ParamsError on the first problem."""
    from analysis.params_checks import CHECKS  # they need the classes above
    if not isinstance(raw, dict):
        raise ParamsError("(top level)", raw, "a YAML mapping of sections", source)
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        field, value, allowed = _first_error(exc)
        raise ParamsError(field, value, allowed, source) from None
    try:
        for check in CHECKS:
            check(params)
    except ParamsError as exc:
        raise ParamsError(exc.field, exc.value, exc.allowed, source) from None
    return params


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, field: str, value: Any, line: int):
        super().__init__(field)
        self.field, self.value, self.line = field, value, line


class YamlShapeError(yaml.YAMLError):
    """An alias, or nesting deeper than MAX_DEPTH: refused while composing, before any value
    is built (an alias bomb expands to gigabytes; deep nesting exhausts Python's stack)."""

    def __init__(self, what: str, line: int):
        super().__init__(what)
        self.what, self.line = what, line


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice is an error, not a silent overwrite,
    and that aliases and nesting deeper than MAX_DEPTH are refused."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlShapeError(f"an alias (*{event.anchor}); write the value out", event.start_mark.line + 1)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlShapeError(f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                path = ".".join(self._path(node) + [str(key)])
                raise DuplicateKeyError(path, key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def _path(self, node: yaml.Node) -> list[str]:
        """The keys leading to `node` from the document's root."""
        def walk(current: yaml.Node, trail: list[str]) -> list[str] | None:
            if current is node:
                return trail
            if isinstance(current, yaml.MappingNode):
                for key_node, value_node in current.value:
                    found = walk(value_node, [*trail, str(key_node.value)])
                    if found is not None:
                        return found
            return None

        return walk(self._root, []) or []

    def construct_document(self, node: yaml.Node) -> Any:
        self._root = node
        return super().construct_document(node)


def _read_text(path: Path) -> str:
    """params.yaml's text, or ParamsError: missing, a folder, unreadable, too large, not UTF-8."""
    try:
        if path.is_dir():
            raise ParamsError("(file)", str(path), "a folder, not a file; params.yaml is a YAML file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ParamsError("(file)", str(path), f"{path.stat().st_size:,} bytes; a params file is a few KB "
                              f"(at most {MAX_FILE_BYTES:,} bytes)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ParamsError("(file)", str(path), "params.yaml not found; run from the repository root") from None
    except OSError as exc:
        raise ParamsError("(file)", str(path), f"cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError("(file)", str(path), f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} on line {line}; "
                          "save the file as UTF-8") from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    text = _read_text(path)
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as exc:
        raise ParamsError(exc.field, exc.value, f"given twice (line {exc.line}); keep one", path) from None
    except YamlShapeError as exc:
        raise ParamsError("(file)", str(path), f"line {exc.line}: {exc.what} is not allowed in params.yaml") from None
    except yaml.YAMLError as exc:
        raise ParamsError("(file)", str(path), f"not valid YAML: {short(' '.join(str(exc).split()), 200)}") from None
    except (ValueError, RecursionError, OverflowError) as exc:  # e.g. an integer of more than 4,300 digits
        raise ParamsError("(file)", str(path), f"a value YAML cannot build: {short(str(exc), 120)}") from None
    return validate_params(raw, path)


@contextmanager
def exit_on_params_error() -> Iterator[None]:
    """Turn a ParamsError into one line on stderr and exit status 2 (for main())."""
    try:
        yield
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_model_arg(prog: str, argv: list[str] | None = None) -> tuple[str, Params]:
    """`--model <key>` of a stage's command line, with params.yaml checked (exit 2 if bad)."""
    parser = argparse.ArgumentParser(prog=f"python -m analysis.{prog}", description=f"DVC stage {prog}@<model>")
    parser.add_argument("--model", required=True, help="a model key from params.yaml (e.g. smollm2-135m)")
    args = parser.parse_args(argv)
    with exit_on_params_error():
        params = load_params()
        params.model(args.model)
    return args.model, params


def main() -> None:
    with exit_on_params_error():
        params = load_params()
    print(f"{PARAMS_FILE}: valid ({', '.join(params.models)})")


if __name__ == "__main__":
    from analysis import params as module  # the imported module, whose ParamsError params_checks raises

    module.main()
