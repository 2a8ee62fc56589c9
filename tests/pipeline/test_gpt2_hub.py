"""GPT-2 small as a user with the hub runs it, offline: `make gpt2` in a temporary clone,
against a Hugging Face cache laid out as the hub writes it (scripts/hub_cache.py: GPT-2
small's exact shape and the two SAE releases, random weights, GPT-2's real tokenizer).
The loading code is the real one, unpatched: HookedTransformer.from_pretrained and
SAE.from_pretrained are only watched (each call is logged), and every attempt to open a
network connection is logged and refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import GPT2_TOKENIZER_DIR, REPO, base_env, copy_working_tree, needs_gpt2_tokenizer, overridden

pytestmark = [pytest.mark.pipeline, needs_gpt2_tokenizer]

sys.path.insert(0, str(REPO / "scripts"))
from hub_cache import write_hub_cache  # noqa: E402

from analysis.params import stages  # noqa: E402

MODEL = "gpt2-small"
# The same code paths as the full run, on less work (two CPU cores).
SMALL = {"family.n_prompts": 4, "stats.bootstrap_resamples": 200, "heads.induction.n_sequences": 4,
         "heads.induction.half_length": 20, "behaviour.max_operand": 5, "behaviour.n_contexts": 2,
         "behaviour.neutral_contexts": ["The number is"], "sae_train.corpus.prose_windows": 8,
         "sae_train.corpus.arithmetic_windows": 6, "sae.top_k": 2, "patching.n_pairs": 4, "patching.min_erring": 4,
         "patching.max_pairs": 8, "patching.top_heads": 2, "patching.random_draws": 4, "patching.eap_ig_steps": 1,
         "patching.circuit_sizes": [5, 10, 20, 40, 80], "patching.circuit_size": 10, "patching.confirm_edges": 2}

# Loaded first by every Python process of the run (PYTHONPATH): logs each call of the two
# loaders (then calls them, unchanged) and each attempted connection (then refuses it).
WATCH = '''
import importlib.abc, importlib.machinery, json, os, socket, sys

LOG = os.environ["HUB_WATCH_LOG"]


def note(**entry):
    with open(LOG, "a") as log:
        log.write(json.dumps({"pid": os.getpid(), **entry}) + "\\n")


def refuse(self, address, *args, **kwargs):
    note(event="connect", address=str(address))
    raise OSError("network connections are refused in this test")


socket.socket.connect = refuse
socket.socket.connect_ex = refuse


def watch(owner, name, label):
    real = getattr(owner, name).__func__

    def called(cls, *args, **kwargs):
        note(event="call", loader=label, args=[str(a) for a in args])
        return real(cls, *args, **kwargs)

    setattr(owner, name, classmethod(called))


class _After(importlib.abc.MetaPathFinder):
    """Wraps the loaders once their modules have run."""

    targets = {"transformer_lens.HookedTransformer": ("HookedTransformer", "from_pretrained"),
               "sae_lens.saes.sae": ("SAE", "from_pretrained")}

    def find_spec(self, name, path=None, target=None):
        if name not in self.targets:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            cls, method = self.targets[name]
            watch(getattr(module, cls), method, f"{cls}.{method}")

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _After())
'''


def hub_env(repo: Path, cache: Path, watch: Path) -> dict[str, str]:
    (watch / "sitecustomize.py").write_text(WATCH)
    return {**base_env(repo), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache), "HUB_WATCH_LOG": str(watch / "log.jsonl"),
            "PYTHONPATH": f"{watch}{os.pathsep}{repo}", "HF_HUB_DISABLE_TELEMETRY": "1"}


def small_clone(root: Path) -> Path:
    """The working tree with small sizes, the venv beside it as `make` expects it, no results."""
    repo = root / "repo"
    repo.mkdir()
    copy_working_tree(repo)
    params = overridden(yaml.safe_load((repo / "params.yaml").read_text()), SMALL)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    return repo


def logged(watch: Path) -> list[dict]:
    log = watch / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2-hub")
    cache, watch = root / "hf", root / "watch"
    watch.mkdir()
    write_hub_cache(cache, GPT2_TOKENIZER_DIR)
    repo = small_clone(root)
    env = hub_env(repo, cache, watch)
    made = subprocess.run(["make", "gpt2"], cwd=repo, env=env, capture_output=True, text=True, timeout=2400)
    return {"repo": repo, "made": made, "log": logged(watch)}


def test_make_gpt2_runs_every_stage_and_the_paper_through_the_real_loaders_offline(gpt2_run):
    made, repo, log = gpt2_run["made"], gpt2_run["repo"], gpt2_run["log"]
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    for stage in (*stages(), "paper"):
        assert f"Running stage '{stage}@{MODEL}'" in made.stdout
    calls = [e for e in log if e["event"] == "call"]
    models = [e for e in calls if e["loader"] == "HookedTransformer.from_pretrained"]
    saes = {tuple(e["args"][:2]) for e in calls if e["loader"] == "SAE.from_pretrained"}
    assert len(models) == len(stages()) and all(e["args"][0] == "gpt2-small" for e in models)  # one per stage
    assert saes == {("gpt2-small-mlp-tm", "blocks.9.hook_mlp_out"), ("gpt2-small-res-jb", "blocks.9.hook_resid_pre")}
    assert [e for e in log if e["event"] == "connect"] == []  # nothing tried the network
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert f"paper@{MODEL}" in lock["stages"]


def test_the_gpt2_paper_renders_its_gpt2_branches(gpt2_run):
    """The study's head L8H6 and feature #1076, named as the study's, and every number in
    the paper from the results or params.yaml."""
    repo = gpt2_run["repo"]
    assert gpt2_run["made"].returncode == 0
    html = (repo / f"paper/_build/{MODEL}/index.html").read_text()
    assert (repo / f"paper/_build/{MODEL}/index.pdf").read_bytes().startswith(b"%PDF")
    assert "GPT-2 small" in html and "L8H6" in html and "the study’s" in html
    assert "Feature #1076, which the study reports" in html and "neuronpedia.org/gpt2-small/9-res-jb/1076" in html
    checked = subprocess.run([sys.executable, "-m", "analysis.numbercheck", "--model", MODEL], cwd=repo,
                             env=base_env(repo), capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("case", ["an SAE missing", "the model's weights damaged"])
def test_a_partial_cache_gets_one_message_naming_what_is_missing_exit_3_and_nothing_written(tmp_path, case):
    cache, watch = tmp_path / "hf", tmp_path / "watch"
    watch.mkdir()
    snapshots = write_hub_cache(cache, GPT2_TOKENIZER_DIR, saes=("gpt2-small-res-jb",))  # mlp-tm absent
    repo = small_clone(tmp_path)
    if case == "an SAE missing":
        stage, expected = "sae_train", ["missing tommmcgrath/gpt2-small-mlp-out-saes/sae_group_gpt2_blocks.9.hook_mlp_out_24576:v0/cfg.json",
                                        "huggingface-cli download tommmcgrath/gpt2-small-mlp-out-saes"]
    else:
        weights = (snapshots["gpt2"] / "model.safetensors").resolve()
        with weights.open("r+b") as handle:
            handle.truncate(weights.stat().st_size // 2)
        stage, expected = "logit_lens", ["damaged", "model.safetensors", "its SHA-256 is not the one the hub named it by"]
    done = subprocess.run([sys.executable, "-m", f"analysis.{stage}", "--model", MODEL], cwd=repo,
                          env=hub_env(repo, cache, watch), capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(e in errors[0] for e in expected), done.stderr
    assert "HF_HUB_OFFLINE is set" in errors[0] and "Nothing was computed" in errors[0]
    assert not (repo / "data" / MODEL).exists() and not (repo / "metrics" / MODEL).exists()
    assert [e for e in logged(watch) if e["event"] == "connect"] == []
