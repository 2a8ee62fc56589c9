"""params.yaml validation: every bad value gets one message naming the field, the value and
what is allowed, before any model loads; a stage given bad params writes nothing."""

import os
import subprocess
import sys

import pytest
import yaml
from helpers import DELETE, REPO, base_params_dict, overridden

from analysis.params import ParamsError, load_params, validate_params

def mutated(changes: dict) -> dict:
    return overridden(base_params_dict(), changes)


CASES = [
    # (id, changes, field named, fragment of what is allowed)
    ("layer out of range", {"models.gpt2-small.configured_head": {"layer": 12, "head": 6}},
     "models.gpt2-small.configured_head.layer", "0..11"),
    ("head out of range", {"models.gpt2-small.configured_head": {"layer": 8, "head": 12}},
     "models.gpt2-small.configured_head.head", "0..11"),
    ("SAE hook that does not exist", {"models.gpt2-small.saes.res-l9.hook": "blocks.9.hook_resid_sideways"},
     "models.gpt2-small.saes.res-l9.hook", "hook_resid_pre"),
    ("SAE hook beyond the last block", {"models.smollm2-135m.saes.res-l22.hook": "blocks.30.hook_resid_pre"},
     "models.smollm2-135m.saes.res-l22.hook", "0..29"),
    ("SAE width that does not match", {"models.gpt2-small.saes.mlp-l9.d_in": 512},
     "models.gpt2-small.saes.mlp-l9.d_in", "768"),
    ("empty answer", {"prompt.answers.correct": "  "}, "prompt.answers.correct", "non-empty"),
    ("identical answers", {"prompt.answers.misconception": "10"}, "prompt.answers.misconception",
     "different from prompt.answers.correct"),
    ("answer that is not a number", {"prompt.answers.misconception": " six"}, "prompt.answers.misconception",
     "a number"),
    ("negative size", {"family.n_prompts": -4}, "family.n_prompts", "greater than or equal to 2"),
    ("zero size", {"heads.top_k": 0}, "heads.top_k", "greater than 0"),
    ("prompt without the query", {"prompt.canonical": "1 + 1 = 2. 2 + 2 = 4."}, "prompt.canonical", "x + y ="),
    ("control with examples", {"prompt.control": "1 + 1 = 2. 5 + 5 ="}, "prompt.control", "no examples"),
    ("unknown attribution metric", {"sae.attribution_metric": "kl_divergence"}, "sae.attribution_metric",
     "'logit_diff' or 'prob_diff'"),
    ("unknown ablation type", {"sae.ablation": "resample"}, "sae.ablation", "'zero' or 'mean'"),
    ("wrong type: string for int", {"logit_lens.top_k": "10"}, "logit_lens.top_k", "valid integer"),
    ("wrong type: string for bool", {"models.smollm2-135m.prepend_bos": "no"}, "models.smollm2-135m.prepend_bos",
     "valid boolean"),
    ("unknown model source", {"models.gpt2-small.source": "ftp"}, "models.gpt2-small.source", "'gguf_wheel' or 'hub'"),
    ("hub model without its name", {"models.gpt2-small.hub_name": DELETE}, "models.gpt2-small.hub_name",
     "required"),
    ("misspelt section", {"logit_lense": {"top_k": 3}}, "logit_lense", "unknown field"),
    ("missing section", {"heads": DELETE}, "heads", "required"),
    ("reported feature beyond the SAE", {"models.gpt2-small.saes.res-l9.report_features": [30000]},
     "models.gpt2-small.saes.res-l9.report_features", "0..24575"),
    ("TopK k as wide as the SAE", {"sae_train.k": 4096}, "sae_train.k", "fewer than"),
    ("spacing variant of other sums", {"prompt.spacing_variants.unspaced": "1+1=2. 2+2=4. 6+6="},
     "prompt.spacing_variants.unspaced", "the same sums"),
    ("interval level above 1", {"stats.ci_level": 1.5}, "stats.ci_level", "less than 1"),
    ("an SAE seed that is sae_train's own", {"sae_seeds.seeds": [0, 1]}, "sae_seeds.seeds", "other than sae_train.seed"),
    ("a repeated SAE seed", {"sae_seeds.seeds": [3, 3]}, "sae_seeds.seeds", "distinct"),
    ("fewer erring pairs used than needed", {"patching.max_erring": 10}, "patching.max_erring",
     "at least patching.min_erring"),
    ("answer reading too short", {"behaviour.max_answer_tokens": 1}, "behaviour.max_answer_tokens", "at least 3"),
    ("neutral context asking for a sum", {"behaviour.neutral_contexts": ["2 + 2 ="]},
     "behaviour.neutral_contexts[0]", "asks for no sum"),
    ("a date that is not one", {"paper.date": "yesterday"}, "paper.date", "ISO 8601"),
    # schema-valid values the pipeline cannot do: each hung or crashed before these checks
    ("fewer distinct prompts than asked (operands 0..1)", {"family.max_operand": 1}, "family.n_prompts",
     "distinct prompts"),
    ("fewer distinct prompts than asked (one shot)", {"family.max_operand": 2, "family.n_shots": 1},
     "family.n_prompts", "distinct prompts"),
    ("ten million prompts", {"family.n_prompts": 10_000_000}, "family.n_prompts", "less than or equal to 100000"),
    ("a billion resamples", {"stats.bootstrap_resamples": 10**9}, "stats.bootstrap_resamples",
     "less than or equal to 100000"),
    ("a seed beyond 32 bits", {"seed": 10**30}, "seed", "less than or equal to 4294967295"),
    ("a family seed beyond 32 bits", {"family.seed": 2**32}, "family.seed", "less than or equal to 4294967295"),
    ("more top tokens than any vocabulary", {"logit_lens.top_k": 1_000_000}, "logit_lens.top_k",
     "less than or equal to 1000"),
    ("one answer a prefix of the other", {"prompt.answers.misconception": " 1"}, "prompt.answers.misconception",
     "not a prefix"),
    ("a superscript digit", {"prompt.answers.misconception": " ²"}, "prompt.answers.misconception", "ASCII digits"),
    ("an Arabic-Indic digit", {"prompt.answers.misconception": " ٦"}, "prompt.answers.misconception",
     "ASCII digits"),
    ("a date without a time zone", {"paper.date": "2026-11-24T00:00:00"}, "paper.date", "time zone"),
    ("a misspelt key", {"family.n_prompts": DELETE, "family.n_promts": 64}, "family.n_promts",
     "unknown field in family; did you mean 'n_prompts'?"),
]


@pytest.mark.parametrize(("changes", "field", "allowed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_params_name_the_field_the_value_and_what_is_allowed(changes, field, allowed):
    with pytest.raises(ParamsError) as error:
        validate_params(mutated(changes))
    message = str(error.value)
    assert error.value.field == field
    assert message.startswith(f"params.yaml: {field} = ")
    assert allowed in message
    bad = next(iter(changes.values()))
    if bad is not DELETE and not isinstance(bad, dict):
        assert repr(error.value.value) in message
    assert "\n" not in message


def test_the_shipped_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert set(params.models) == {"smollm2-135m", "gpt2-small"}


def test_an_unknown_model_key_is_refused():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ParamsError, match=r"models = 'gpt5': unknown model; params.yaml declares"):
        params.model("gpt5")


@pytest.mark.parametrize(("stage", "changes"), [
    ("logit_lens", {"logit_lens.top_k": -1}),
    ("sae", {"sae.ablation": "resample"}),
])
def test_a_stage_given_bad_params_exits_2_with_one_line_and_writes_nothing(tmp_path, stage, changes):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(mutated(changes)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", f"analysis.{stage}", "--model", "smollm2-135m"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: params.yaml: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_an_unknown_model_on_the_command_line_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "analysis.heads", "--model", "gpt5"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown model" in result.stderr


def test_a_file_that_is_not_utf8_gets_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(yaml.safe_dump(base_params_dict()).encode().replace(b"seed: 0", b"seed: 0 # caf\xe9", 1))
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert "not UTF-8" in str(error.value) and "byte 0xe9" in str(error.value) and "\n" not in str(error.value)


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    text = yaml.safe_dump(base_params_dict(), sort_keys=False)
    path.write_text(text.replace("  n_prompts: ", "  n_prompts: 8\n  n_prompts: ", 1))
    with pytest.raises(ParamsError) as error:
        load_params(path)
    message = str(error.value)
    assert "family.n_prompts" in message and "given twice" in message and "line" in message
    assert "\n" not in message


def test_the_params_check_imports_no_torch_and_exits_2_with_one_line_on_bad_params(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(mutated({"family.max_operand": 1})))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "analysis.params"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "pydantic" in imported and not [m for m in imported if m.split(".")[0] == "torch"]
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error: params.yaml: family.n_prompts = ")


def test_params_drawn_within_the_schema_are_refused_or_their_prompts_are_generated_quickly():
    """A property test, seeded: every draw is either refused (ParamsError) or its prompt
    family is generated within a time bound, never a hang."""
    import random
    import time

    from analysis.arithmetic import few_shot_family

    rng = random.Random(0)
    refused = generated = 0
    for _ in range(150):
        family = {"n_prompts": rng.choice([2, 8, 64, 500, 3000, 10**6, 10**7]), "n_shots": rng.randint(1, 6),
                  "max_operand": rng.choice([1, 2, 3, 5, 9, 20, 99]), "seed": rng.randint(0, 2**32 - 1)}
        answer = rng.choice([" 6", " 1", " 100", " ²", " ٦", "6", " 10"])
        try:
            params = validate_params(mutated({"family": family, "prompt.answers.misconception": answer}))
        except ParamsError:
            refused += 1
            continue
        start = time.perf_counter()
        prompts = few_shot_family(params.family.n_prompts, params.family.n_shots, params.family.max_operand,
                                  params.family.seed)
        assert len({p.text for p in prompts}) == params.family.n_prompts
        assert time.perf_counter() - start < 2 + 1e-3 * params.family.n_prompts, family  # linear, never a hang
        generated += 1
    assert refused > 10 and generated > 10  # both branches were exercised


# --- hostile or careless params files: one line, exit 2, under a second ----------------

def _bomb(levels: int = 9) -> str:
    """A YAML alias bomb: each level lists the previous one nine times (9**levels strings)."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _params_text(**replace: str) -> str:
    text = (REPO / "params.yaml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


HOSTILE = [
    # (id, file text or None for a folder, fragment of the message)
    ("an alias bomb under seed", lambda: _params_text(**{"seed: 0\n": "seed:\n" + "".join(
        "  " + line + "\n" for line in _bomb().splitlines())}), "an alias (*a0)"),
    ("an alias bomb under an unknown key", lambda: _params_text(**{"seed: 0\n": "seed: 0\n" + "extra:\n" + "".join(
        "  " + line + "\n" for line in _bomb().splitlines())}), "an alias"),
    ("a model key that leaves data/", lambda: _params_text(**{"  smollm2-135m:\n": "  ../../escape:\n"}),
     "models = '../../escape': a name"),
    ("an absolute model key", lambda: _params_text(**{"  smollm2-135m:\n": "  /tmp/escape:\n"}), "a name"),
    ("10,000 levels of nesting", lambda: _params_text(**{"seed: 0\n": "seed: " + "[" * 10_000 + "]" * 10_000 + "\n"}),
     "nesting deeper than 32 levels"),
    ("a billion contexts", lambda: _params_text(**{"n_contexts: 30": "n_contexts: 1000000000"}),
     "behaviour.n_contexts = 1000000000: Input should be less than or equal to 100000"),
    ("a billion induction sequences", lambda: _params_text(**{"n_sequences: 32": "n_sequences: 1000000000"}),
     "heads.induction.n_sequences"),
    ("a billion random draws", lambda: _params_text(**{"random_draws: 1000": "random_draws: 1000000000"}),
     "patching.random_draws"),
    ("a 100,000-character prompt", lambda: _params_text(**{'control: "5 + 5 ="': 'control: "' + "1 + 1 = 2. " * 9091
                                                            + '5 + 5 ="'}), "prompt.control = "),
    ("a prompt beyond the context", lambda: _params_text(**{'control: "5 + 5 ="': 'control: "' + " " * 2500
                                                             + '5 + 5 ="'}), "the context of smollm2-135m (2048 tokens)"),
    ("a neutral context beyond GPT-2's", lambda: _params_text(**{'    - "Chapter"': '    - "' + "Chapter " * 150 + '"'}),
     "the context of gpt2-small (1024 tokens)"),
    ("a 100,000-digit answer", lambda: _params_text(**{'misconception: " 6"': 'misconception: " ' + "6" * 100_000 + '"'}),
     "prompt.answers.misconception"),
    ("a 100,000-digit integer", lambda: _params_text(**{"seed: 0\n": "seed: " + "7" * 100_000 + "\n"}),
     "a value YAML cannot build"),
    ("a 10 MB value", lambda: _params_text(**{"seed: 0\n": "seed: '" + "x" * 10_000_000 + "'\n"}), "at most 1,048,576 bytes"),
    ("a folder", None, "a folder, not a file"),
]


@pytest.mark.parametrize(("text", "fragment"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_params_get_one_line_in_under_a_second(tmp_path, text, fragment):
    import time

    path = tmp_path / "params.yaml"
    if text is None:
        path.mkdir()
    else:
        path.write_text(text())
    start = time.perf_counter()
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert fragment in message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("case", ["an alias bomb under seed", "a model key that leaves data/", "a folder"])
def test_the_params_check_exits_2_with_one_line_for_hostile_files(tmp_path, case):
    text = next(c[1] for c in HOSTILE if c[0] == case)
    path = tmp_path / "params.yaml"
    if text is None:
        path.mkdir()
    else:
        path.write_text(text())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "analysis.params"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: params.yaml: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written, nothing escaped
