"""params.yaml's checks that span fields: what pydantic's per-field types cannot say
(models' shapes against their SAEs and hooks, prompts against each model's context,
answers, operands, the error sets). analysis/params.py runs them, in CHECKS' order, after
the per-field validation; each raises ParamsError naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from analysis.arithmetic import count_few_shot_prompts, parse_arithmetic
from analysis.params import MAX_NAME, NAME, ModelParams, Params, ParamsError, SaeParams, Shape, hook_layer


def _check_sae(params: Params, field: str, sae: SaeParams, shape: Shape) -> None:
    try:
        layer = hook_layer(sae.hook)
    except ValueError:
        raise ParamsError(f"{field}.hook", sae.hook, "a residual-width hook: blocks.<layer>.hook_resid_pre, "
                          "hook_resid_mid, hook_resid_post, hook_mlp_out or hook_attn_out") from None
    if layer >= shape.n_layers:
        raise ParamsError(f"{field}.hook", sae.hook, f"a block in 0..{shape.n_layers - 1}")
    if sae.d_in != shape.d_model:
        raise ParamsError(f"{field}.d_in", sae.d_in, f"{shape.d_model}, the width of {sae.hook} (d_model)")
    if sae.source == "pretrained":
        for name in ("release", "sae_id"):
            if not getattr(sae, name):
                raise ParamsError(f"{field}.{name}", getattr(sae, name), "required for a pretrained SAE")
    elif params.sae_train.k >= sae.d_sae:
        raise ParamsError("sae_train.k", params.sae_train.k, f"fewer than the SAE's d_sae ({sae.d_sae})")
    for feature in sae.report_features:
        if feature >= sae.d_sae:
            raise ParamsError(f"{field}.report_features", feature, f"a latent index in 0..{sae.d_sae - 1}")


def check_name(field: str, name: Any) -> None:
    """A model key or SAE name: a plain lower-case name that cannot leave its folder."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME.fullmatch(name):
        raise ParamsError(field, name, f"a name of at most {MAX_NAME} characters: lower-case letters, digits, '_', "
                          "'-' and single dots between them (it names a folder under data/, so no '/' or '..')")


FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def _check_model(params: Params, key: str, model: ModelParams) -> None:
    check_name("models", key)
    field = f"models.{key}"
    for name in ("package", "gguf_file"):  # looked up inside an installed package: a name, not a path
        value = getattr(model, name)
        if value is not None and (not FILE_NAME.fullmatch(value) or ".." in value):
            raise ParamsError(f"{field}.{name}", value, "a file or package name (letters, digits, '.', '_', '-')")
    if model.hub_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?",
                                                        model.hub_name) or ".." in (model.hub_name or ""):
        raise ParamsError(f"{field}.hub_name", model.hub_name, "a model name such as 'gpt2-small' or 'org/name'")
    required = {"gguf_wheel": ("package", "gguf_file"), "hub": ("hub_name",)}[model.source]
    for name in required:
        if not getattr(model, name):
            raise ParamsError(f"{field}.{name}", getattr(model, name),
                              f"required (a non-empty string) when source is {model.source!r}")
    shape, head = model.shape, model.configured_head
    if head is not None and head.layer >= shape.n_layers:
        raise ParamsError(f"{field}.configured_head.layer", head.layer,
                          f"a layer in 0..{shape.n_layers - 1} ({key} has {shape.n_layers} layers)")
    if head is not None and head.head >= shape.n_heads:
        raise ParamsError(f"{field}.configured_head.head", head.head,
                          f"a head in 0..{shape.n_heads - 1} ({key} has {shape.n_heads} heads per layer)")
    for name, sae in model.saes.items():
        check_name(f"{field}.saes", name)
        _check_sae(params, f"{field}.saes.{name}", sae, shape)
    if params.heads.top_k > shape.n_layers * shape.n_heads:
        raise ParamsError("heads.top_k", params.heads.top_k,
                          f"at most {shape.n_layers * shape.n_heads}, the number of heads of {key}")


def _check_models(params: Params) -> None:
    if not params.models:
        raise ParamsError("models", {}, "declare at least one model")
    for key, model in params.models.items():
        _check_model(params, key, model)


def _check_prompts(params: Params) -> None:
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
    canonical = parse_arithmetic(prompt.canonical)
    for name, text in prompt.spacing_variants.items():
        try:
            variant = parse_arithmetic(text)
        except ValueError as exc:
            raise ParamsError(f"prompt.spacing_variants.{name}", text,
                              f"the canonical prompt in another spacing ({exc})") from None
        if (variant.shots, variant.query) != (canonical.shots, canonical.query):
            raise ParamsError(f"prompt.spacing_variants.{name}", text,
                              f"the same sums as prompt.canonical ({prompt.canonical!r}), spaced differently")


def _check_answers(params: Params) -> None:
    answers = params.prompt.answers.model_dump()
    for name, text in answers.items():
        if not text.strip():
            raise ParamsError(f"prompt.answers.{name}", text, "a non-empty answer string such as ' 10'")
    if answers["correct"].strip() == answers["misconception"].strip():
        raise ParamsError("prompt.answers.misconception", answers["misconception"],
                          f"an answer different from prompt.answers.correct ({answers['correct']!r})")
    for name, text in answers.items():
        if not re.fullmatch(r"[0-9]+", text.strip()):
            raise ParamsError(f"prompt.answers.{name}", text, "a number written in ASCII digits 0-9, such as ' 10'")
    for name, other in (("misconception", "correct"), ("correct", "misconception")):
        if answers[other].startswith(answers[name]):
            raise ParamsError(f"prompt.answers.{name}", answers[name], f"an answer that is not a prefix of "
                              f"prompt.answers.{other} ({answers[other]!r}): its tokens would start the other's")


def _check_operands(params: Params) -> None:
    for section in ("family", "behaviour"):
        bound = getattr(params, section).max_operand
        if bound > 99:
            raise ParamsError(f"{section}.max_operand", bound, "an operand bound in 1..99")


def _check_behaviour(params: Params) -> None:
    behaviour = params.behaviour
    digits = len(str(2 * behaviour.max_operand))
    if behaviour.max_answer_tokens < digits + 1:
        raise ParamsError("behaviour.max_answer_tokens", behaviour.max_answer_tokens,
                          f"at least {digits + 1}: answers up to {2 * behaviour.max_operand} can take {digits} "
                          "digit tokens, and one more shows where the number ends")
    for i, text in enumerate(behaviour.neutral_contexts):
        if not text.strip() or "=" in text:
            raise ParamsError(f"behaviour.neutral_contexts[{i}]", text, "a non-empty text that asks for no sum")


def _check_family(params: Params) -> None:
    family = params.family
    if family.max_operand > 99:
        return  # _check_operands says so
    distinct = count_few_shot_prompts(family.n_shots, family.max_operand)
    if family.n_prompts > distinct // 2:
        raise ParamsError("family.n_prompts", family.n_prompts, f"at most {distinct // 2}: with {family.n_shots} "
                          f"shot(s) and operands 0..{family.max_operand} there are {distinct} distinct prompts, and "
                          "the seeded draw takes at most half of them so that it ends quickly")


MAX_ANSWER = 8  # characters of an answer: a space and a few digits
ANSWER_ROOM = 16  # tokens kept free after a prompt: the answers, and the greedy reading


def _texts_fed(params: Params) -> Iterator[tuple[str, str]]:
    """(field, text) of every text from params.yaml that a stage feeds to a model."""
    yield "prompt.canonical", params.prompt.canonical
    yield "prompt.control", params.prompt.control
    for name, text in params.prompt.spacing_variants.items():
        yield f"prompt.spacing_variants.{name}", text
    for i, text in enumerate(params.behaviour.neutral_contexts):
        yield f"behaviour.neutral_contexts[{i}]", text


def _check_context(params: Params) -> None:
    """Every prompt fits every model's context, judged before any tokenizer loads: a text's
    UTF-8 bytes bound its tokens for byte-level BPE tokenizers (GPT-2's, SmolLM2's), since
    each token covers at least one byte."""
    for name, text in params.prompt.answers.model_dump().items():
        if len(text) > MAX_ANSWER:
            raise ParamsError(f"prompt.answers.{name}", text, f"at most {MAX_ANSWER} characters, such as ' 10'")
    for key, model in params.models.items():
        n_ctx = model.shape.n_ctx
        room = n_ctx - ANSWER_ROOM
        for field, text in _texts_fed(params):
            if len(text.encode()) > room:
                raise ParamsError(field, text, f"at most {room} UTF-8 bytes, so that its tokens and the answers fit "
                                  f"the context of {key} ({n_ctx} tokens)")
        sequence = 2 * params.heads.induction.half_length + 1
        if sequence > n_ctx:
            raise ParamsError("heads.induction.half_length", params.heads.induction.half_length,
                              f"at most {(n_ctx - 1) // 2}: the repeated sequence and its BOS must fit the context "
                              f"of {key} ({n_ctx} tokens)")
        if params.sae_train.corpus.context_size > n_ctx:
            raise ParamsError("sae_train.corpus.context_size", params.sae_train.corpus.context_size,
                              f"at most {n_ctx}, the context of {key}")


def _check_patching(params: Params) -> None:
    s = params.patching
    for field in ("causal", "circuit"):
        for name in getattr(s, field):
            if name not in s.sets:
                raise ParamsError(f"patching.{field}", name, f"a set of patching.sets ({sorted(s.sets)})")
    for name in s.circuit:
        if name not in s.causal:
            raise ParamsError("patching.circuit", name, "a set also listed in patching.causal")
    for name, spec in s.sets.items():
        check_name("patching.sets", name)
        field = f"patching.sets.{name}"
        if spec.kind == "placed" and (spec.n_shots is None or not spec.where
                                      or any(i >= spec.n_shots for i in spec.where)):
            raise ParamsError(f"{field}.where", spec.where, "example positions (0 the first) below n_shots")
        if spec.kind == "natural" and spec.error is None:
            raise ParamsError(f"{field}.error", spec.error, "the wrong answer to collect, e.g. last_operand_plus_one")
    if s.circuit_size not in s.circuit_sizes:
        raise ParamsError("patching.circuit_size", s.circuit_size, f"one of patching.circuit_sizes ({s.circuit_sizes})")
    if s.max_erring < s.min_erring:
        raise ParamsError("patching.max_erring", s.max_erring, f"at least patching.min_erring ({s.min_erring})")
    if s.max_pairs < s.n_pairs:
        raise ParamsError("patching.max_pairs", s.max_pairs, f"at least patching.n_pairs ({s.n_pairs})")


def _check_sae_seeds(params: Params) -> None:
    seeds = params.sae_seeds.seeds
    if params.sae_train.seed in seeds or len(set(seeds)) < len(seeds):
        raise ParamsError("sae_seeds.seeds", seeds, f"distinct seeds other than sae_train.seed ({params.sae_train.seed})")
    smallest = min((s.d_sae for m in params.models.values() for s in m.saes.values() if s.source == "trained"),
                   default=None)
    if smallest is not None and params.sae_seeds.top > smallest:
        raise ParamsError("sae_seeds.top", params.sae_seeds.top, f"at most the smallest trained SAE's d_sae ({smallest})")


CHECKS = (_check_models, _check_context, _check_prompts, _check_answers, _check_operands, _check_family,
          _check_behaviour, _check_patching, _check_sae_seeds)


