"""A Hugging Face cache, as the hub would have written it, holding GPT-2 small and the two
SAE releases params.yaml names (gpt2-small-mlp-tm, gpt2-small-res-jb, layer 9) with
RANDOM weights of their exact shapes: to run `make gpt2` offline, through the unchanged
loading code (HookedTransformer.from_pretrained, SAE.from_pretrained), without the hub.
The numbers it gives mean nothing; what it shows is that every stage and the paper run.

    python scripts/hub_cache.py /tmp/hf-gpt2 [--tokenizer ../shared/gpt2-tokenizer]
    HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf-gpt2 make gpt2

The names are read from the libraries, not written down here: the repository id that
TransformerLens resolves `gpt2-small` to (get_official_model_name), and each SAE's
repository and folder from sae_lens' release table (get_repo_id_and_folder_name). The
layout is huggingface_hub's: hub/models--<org>--<name>/ with blobs/ (named by their
SHA-256, as the hub names LFS files, or by their git blob hash), snapshots/<revision>/
linking to them, and refs/main naming the revision. The model is written by transformers'
own save_pretrained (config.json, model.safetensors, generation_config.json) and the
tokenizer from GPT-2's real vocabulary and merges (MIT; `--tokenizer`, by default the copy
beside this repository in ../shared/gpt2-tokenizer). Each SAE folder holds cfg.json (in the
releases' pre-6.0 format: the keys sae_lens' loader reads), sae_weights.safetensors
(W_enc, W_dec, b_enc, b_dec) and sparsity.safetensors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO.parent / "shared" / "gpt2-tokenizer"
# The hub's gpt2/config.json: TransformerLens reads its legacy key n_ctx, which
# transformers' GPT2Config no longer writes.
GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
    "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257,
}
SAES = {"gpt2-small-mlp-tm": "blocks.9.hook_mlp_out", "gpt2-small-res-jb": "blocks.9.hook_resid_pre"}
D_MODEL, D_SAE = 768, 24576


def _revision(repo_id: str) -> str:
    """A fixed 40-hex revision per repository (the hub's are commit hashes)."""
    return hashlib.sha1(f"arith-mismatch random stand-in of {repo_id}".encode()).hexdigest()


def _blob_name(path: Path) -> str:
    """The name the hub gives a file's blob: the SHA-256 of an LFS file (weights), else git's blob hash."""
    data = path.read_bytes()
    if path.suffix in (".safetensors", ".bin"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_repo(hf_home: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Put `files` (name in the repository -> a local file) into the cache as the hub
    would: blobs, a snapshot of links to them, refs/main. Returns the snapshot folder."""
    root = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    revision = _revision(repo_id)
    snapshot = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        blob = root / "blobs" / _blob_name(source)
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


def gpt2_files(folder: Path, tokenizer_dir: Path, seed: int) -> dict[str, Path]:
    """GPT-2 small's config and random weights (transformers' save_pretrained), and its
    real tokenizer, saved by transformers into `folder`."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config())  # GPT2Config's defaults are GPT-2 small's shape
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "config.json").write_text(json.dumps(GPT2_CONFIG, indent=2) + "\n")  # the hub's file, legacy keys and all
    bpe = ByteLevelBPETokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        model_max_length=1024)
    tokenizer.save_pretrained(folder)
    shutil.copyfile(tokenizer_dir / "vocab.json", folder / "vocab.json")
    shutil.copyfile(tokenizer_dir / "merges.txt", folder / "merges.txt")
    return {p.name: p for p in folder.iterdir() if p.is_file()}


def sae_files(folder: Path, release: str, sae_id: str, seed: int) -> dict[str, Path]:
    """cfg.json, sae_weights.safetensors and sparsity.safetensors of a standard (ReLU) SAE
    of the release's shape, random."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    weights = {"W_enc": torch.randn(D_MODEL, D_SAE, generator=generator) / D_MODEL**0.5,
               "W_dec": torch.randn(D_SAE, D_MODEL, generator=generator) / D_SAE**0.5,
               "b_enc": torch.randn(D_SAE, generator=generator) * 0.01,
               "b_dec": torch.randn(D_MODEL, generator=generator) * 0.01}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, folder / "sae_weights.safetensors")
    save_file({"sparsity": torch.full((D_SAE,), -3.0)}, folder / "sparsity.safetensors")
    layer = int(sae_id.split(".")[1])
    cfg = {  # the releases' pre-6.0 keys that sae_lens' loader reads (handle_pre_6_0_config)
        "model_name": "gpt2-small", "hook_point": sae_id, "hook_point_layer": layer, "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False, "context_size": 128,
        "d_in": D_MODEL, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu", "prepend_bos": True,
        "apply_b_dec_to_input": True, "activation_fn_str": "relu",
        # the release table registers a norm scaling factor for mlp-tm: its activations were normalised
        "normalize_activations": release == "gpt2-small-mlp-tm",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return {name: folder / name for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")}


def write_hub_cache(hf_home: Path, tokenizer_dir: Path = DEFAULT_TOKENIZER, saes: tuple[str, ...] = tuple(SAES),
                    with_model: bool = True, seed: int = 0) -> dict[str, Path]:
    """The cache under `hf_home` (what HF_HOME names). Returns each repository's snapshot."""
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name
    from transformer_lens.loading_from_pretrained import get_official_model_name

    if not (tokenizer_dir / "vocab.json").is_file():
        raise FileNotFoundError(f"{tokenizer_dir}: no GPT-2 tokenizer files (vocab.json, merges.txt) there")
    written = {}
    with tempfile.TemporaryDirectory(prefix="hub-cache-") as tmp:
        if with_model:
            repo_id = get_official_model_name("gpt2-small")
            written[repo_id] = write_repo(hf_home, repo_id, gpt2_files(Path(tmp) / "gpt2", tokenizer_dir, seed))
        for i, release in enumerate(saes):
            repo_id, folder = get_repo_id_and_folder_name(release, SAES[release])
            files = sae_files(Path(tmp) / release, release, SAES[release], seed + 1 + i)
            written[release] = write_repo(hf_home, repo_id, {f"{folder}/{name}": path for name, path in files.items()})
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/hub_cache.py", description=__doc__.splitlines()[0])
    parser.add_argument("hf_home", type=Path, help="the folder to use as HF_HOME")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                        help="a folder with GPT-2's vocab.json and merges.txt (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        written = write_hub_cache(args.hf_home, args.tokenizer)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for repo_id, snapshot in written.items():
        print(f"{repo_id}: {snapshot}")
    print(f"now: HF_HUB_OFFLINE=1 HF_HOME={args.hf_home} make gpt2")


if __name__ == "__main__":
    main()
