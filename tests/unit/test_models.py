"""Model loading: the hub path fails fast and clearly; no silent fallback; shapes checked."""

import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, tiny_model

from analysis.models import FORBID_ENV, ModelUnavailableError, check_shape, load_model


@pytest.fixture
def no_hub(monkeypatch):
    """The hub 'unreachable': its endpoint points at a closed local port."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_gpt2_without_the_hub_fails_fast_naming_the_alternatives(no_hub, params):
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as error:
        load_model("gpt2-small", params, device="cpu")
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "gpt2-small" in message and "Hugging Face hub" in message
    assert "`make`" in message and "`dvc pull`" in message and "smollm2-135m" in message


def test_the_stage_exits_3_with_one_message_and_writes_nothing(no_hub, tmp_path):
    import os

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "analysis.logit_lens", "--model", "gpt2-small"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 30
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot load" in errors[0]
    assert not (REPO / "data" / "gpt2-small").exists()


def test_the_paper_environment_forbids_loading(monkeypatch, params):
    monkeypatch.setenv(FORBID_ENV, "1")
    with pytest.raises(ModelUnavailableError, match="disabled"):
        load_model("smollm2-135m", params, device="cpu")


def test_a_model_of_another_shape_is_refused(params):
    model = tiny_model(n_layers=2)
    with pytest.raises(ModelUnavailableError, match=r"declares \{'n_layers': 30"):
        check_shape("smollm2-135m", model, params.model("smollm2-135m"))


def test_an_unknown_model_key_is_a_params_error(params):
    from analysis.params import ParamsError

    with pytest.raises(ParamsError, match="unknown model"):
        load_model("gpt5", params)


def test_a_pretrained_sae_without_the_hub_fails_fast(no_hub, params, tmp_path):
    from analysis.sae_train import load_sae

    spec = params.model("gpt2-small").saes["res-l9"]
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="gpt2-small-res-jb/blocks.9.hook_resid_pre"):
        load_sae("gpt2-small", "res-l9", spec, tmp_path)
    assert time.monotonic() - start < 30


def test_weights_stored_transposed_give_the_same_bits_without_a_copy_per_forward_pass():
    from helpers import rotary_model

    from analysis.models import store_transposed

    model = rotary_model()
    tokens = torch.randint(model.cfg.d_vocab, (3, 11))
    with torch.no_grad():
        before = model(tokens)
        store_transposed(model)
        after = model(tokens)
    weights = [model.unembed.W_U, *(w for b in model.blocks for w in (b.mlp.W_gate, b.mlp.W_in, b.mlp.W_out))]
    assert all(w.T.is_contiguous() and w.T.contiguous().data_ptr() == w.data_ptr() for w in weights)
    assert torch.equal(before, after)


def test_a_damaged_converted_model_cache_is_detected_deleted_and_rebuilt(tmp_path, monkeypatch, params, capsys):
    """A truncated or altered weights file in the cache is found by its SHA-256 before use;
    the loader says so, deletes the cache and converts again (stopped here at that point)."""
    from analysis import models

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = params.model("smollm2-135m")
    cached = tmp_path / "arith-mismatch" / "models" / f"smollm2-135m-{models._cache_key(models.gguf_path(spec))}"
    cached.mkdir(parents=True)
    (cached / "weights.safetensors").write_bytes(b"\x00" * 100)  # what a full disk or a killed copy leaves
    (cached / "weights.sha256").write_text("0" * 64)

    class Converting(Exception):
        pass

    def convert(spec):
        raise Converting

    monkeypatch.setattr(models, "load_gguf_hf", convert)
    with pytest.raises(Converting):
        models.load_gguf_wheel_model("smollm2-135m", spec, "cpu")
    err = capsys.readouterr().err
    assert "converted-model cache" in err and "is damaged" in err and "converting the GGUF file again" in err
    assert not cached.exists()


def test_a_stage_that_cannot_write_its_outputs_stops_before_loading_the_model(tmp_path):
    import os
    import shutil

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "smollm2-135m").write_text("a file where the output folder should be")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "analysis.logit_lens", "--model", "smollm2-135m"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 7, result.stderr
    assert "cannot write its outputs in data/smollm2-135m" in result.stderr and "model loaded" not in result.stderr
    assert time.monotonic() - start < 15
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "params.yaml", "smollm2-135m"]


def test_a_cached_weights_file_that_is_damaged_is_named(tmp_path):
    import hashlib

    from safetensors.torch import save_file

    from analysis.models import damaged

    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(64)}, weights)
    blob = tmp_path / hashlib.sha256(weights.read_bytes()).hexdigest()  # as the hub names its weights
    weights.rename(blob)
    link = tmp_path / "model.safetensors"
    link.symlink_to(blob.name)
    assert damaged(link) is None
    with blob.open("r+b") as handle:
        handle.truncate(blob.stat().st_size - 10)
    assert damaged(link) == "its SHA-256 is not the one the hub named it by"
    other = tmp_path / "plain.safetensors"  # not named by its hash: its own header says how long it is
    other.write_bytes((1000).to_bytes(8, "little") + b"{}")
    assert damaged(other) == "it is shorter than its own header says"


def test_offline_an_incomplete_cache_is_named_before_anything_loads(tmp_path, monkeypatch, params):
    from analysis.models import ModelUnavailableError, check_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelUnavailableError) as error:
        check_hub_cache("gpt2-small", params.model("gpt2-small"), with_saes=True)
    message = str(error.value)
    assert message.startswith("gpt2-small: HF_HUB_OFFLINE is set, and the Hugging Face cache") and "\n" not in message
    for missing in ("gpt2/config.json", "gpt2/model.safetensors", "jbloom/GPT2-Small-SAEs-Reformatted/"
                    "blocks.9.hook_resid_pre/sae_weights.safetensors", "huggingface-cli download gpt2"):
        assert missing in message
    check_hub_cache("smollm2-135m", params.model("smollm2-135m"), with_saes=True)  # not a hub model: nothing to check
