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
    ("answer reading too short", {"behaviour.max_answer_tokens": 1}, "behaviour.max_answer_tokens", "at least 3"),
    ("neutral context asking for a sum", {"behaviour.neutral_contexts": ["2 + 2 ="]},
     "behaviour.neutral_contexts[0]", "asks for no sum"),
    ("a date that is not one", {"paper.date": "yesterday"}, "paper.date", "ISO 8601"),
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
