"""Builders for small test objects: tokenizers, tiny models, params, GPT-2's shape."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from analysis.models import store_transposed
from analysis.params import Params, validate_params

REPO = Path(__file__).resolve().parents[1]
# GPT-2's real tokenizer files (MIT), kept beside the repository, not in it (../shared, as CI
# has it); the tests that need them skip, saying so, where they are absent.
GPT2_TOKENIZER_DIR = REPO.parent / "shared" / "gpt2-tokenizer"
needs_gpt2_tokenizer = pytest.mark.skipif(not (GPT2_TOKENIZER_DIR / "vocab.json").is_file(),
                                          reason=f"GPT-2's tokenizer files are not in {GPT2_TOKENIZER_DIR}")
CHARS = list("0123456789 +=.,abcdefghijklmnopqrstuvwxyz:\n")


def base_params_dict() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


DELETE = object()  # an override value that removes the field


def overridden(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of a params mapping with dotted-path overrides: {"logit_lens.top_k": 3}."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


def make_params(**overrides: Any) -> Params:
    """params.yaml with dotted-path overrides: make_params(**{"logit_lens.top_k": 3})."""
    return validate_params(overridden(base_params_dict(), overrides))


def char_tokenizer(bos: bool = True):
    """One token per character (like SmolLM2 for digits and spaces), saved and reloaded
    so that transformer_lens can re-create it by name."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<unk>", "<bos>"]
    vocab = {token: i for i, token in enumerate(specials + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>",
                                        bos_token="<bos>" if bos else None, eos_token="<bos>", pad_token="<bos>")
    folder = tempfile.mkdtemp(prefix="char-tokenizer-")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def tiny_model(tokenizer=None, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, *,
               normalization: str = "LN", prepend_bos: bool = True, seed: int = 0, attn_only: bool = False):
    """A randomly initialised HookedTransformer small enough for unit tests."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = tokenizer or char_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
        d_mlp=None if attn_only else 4 * d_model, attn_only=attn_only,
        n_ctx=128, d_vocab=len(tokenizer), act_fn="gelu_new", normalization_type=normalization,
        default_prepend_bos=prepend_bos, seed=seed, device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    return model.eval()


def rotary_model(n_layers: int = 3, seed: int = 0):
    """A random model built like SmolLM2 (rotary positions, grouped keys and values, RMS
    norm, gated MLP), small enough for unit tests."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = char_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64, act_fn="silu",
        gated_mlp=True, normalization_type="RMS", final_rms=True, positional_embedding_type="rotary",
        rotary_dim=8, n_ctx=128, d_vocab=len(tokenizer), default_prepend_bos=True, seed=seed, device="cpu",
    )
    return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False).eval()


def gpt2_tokenizer():
    """GPT-2's real tokenizer, from the test data in this repository."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(str(GPT2_TOKENIZER_DIR / "vocab.json"), str(GPT2_TOKENIZER_DIR / "merges.txt"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    folder = tempfile.mkdtemp(prefix="gpt2-tokenizer-")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def random_gpt2_small():
    """GPT-2 small's exact shape and real tokenizer, random weights: the gpt2-small code
    path, offline. Weight processing as from_pretrained does it (fold LN, centre)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
        act_fn="gelu_new", normalization_type="LN", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True, seed=0, device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=gpt2_tokenizer(), move_to_device=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)
    store_transposed(model)  # as load_model does
    return model.eval()


def prob_close(a: float, b: float, atol: float = 1e-6) -> bool:
    return abs(a - b) <= atol


def seed(value: int = 0) -> None:
    torch.manual_seed(value)


def random_sae(d_in: int, d_sae: int, kind: str = "standard", k: int = 8, seed: int = 0):
    """A randomly initialised sae_lens SAE (standard ReLU like the GPT-2 releases, or TopK)."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    if kind == "topk":
        return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)  # nonzero biases, so that tests see them cancel
        sae.b_enc.normal_(0, 0.1)
    return sae


# --- pipeline tests: a copy of the working tree, and the environment `make` gives stages ---

def base_env(cwd: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    environ = {k: v for k, v in os.environ.items() if k != "ARITH_PIN_AVX2"}  # the default numerics, as under `make`
    return {**environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd),
            "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg", "DVC_NO_ANALYTICS": "1"}


def copy_working_tree(dst: Path) -> None:
    """The files git would commit (tracked, and untracked but not ignored), as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
