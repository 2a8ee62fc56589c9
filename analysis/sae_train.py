"""Sparse autoencoders: train one (bundled model) or load the pretrained ones (GPT-2 small),
and measure their quality on the same corpus.

DVC stage `sae_train@<model>`. Reads params.yaml [seed, models.<model>, family,
sae_train]; writes data/<model>/sae_train/<sae>/ (a trained SAE in sae_lens' format:
cfg.json and sae_weights.safetensors; for a pretrained one, source.json naming what was
loaded) with stats.safetensors (each latent's mean activation and firing rate on the
held-out corpus), and data/<model>/sae_train.json.

- `source: trained`: a TopK SAE trained with sae_lens' own SAETrainer on activations of
  the model at the SAE's hook, over the corpus of analysis/corpus.py (prose shipped with
  Python, mixed with arithmetic). Seeded; a few CPU minutes.
- `source: pretrained`: `SAE.from_pretrained(release, sae_id)` from the Hugging Face hub,
  with the model loaded as those releases expect (transformer_lens' default processing).

Quality, on held-out windows of the corpus: explained variance, L0, the fraction of
latents that never fire, next-token loss with the SAE spliced in (no error term) against
the clean model and against the hook zero-ablated, and first-token answer accuracy on
the prompt family with and without the SAE.

    python -m analysis.sae_train --model smollm2-135m
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analysis.artifacts import StagePaths, atomic_write_dir, save_json, save_tensors, to_json_bytes
from analysis.corpus import PROSE_PYTHON, PROSE_SOURCE, Corpus, build_corpus
from analysis.params import Params, SaeParams, hook_layer
from analysis.prompts import PreparedPrompt, prepare_family, run_by_length
from analysis.saes import STAGE, CorpusRecord, Quality, SaeRecord, SaeTrainMetrics, load_sae, splice
from analysis.scoring import final_logits
from analysis.stage import run_stage
from analysis.timing import progress

# What `dvc metrics show` lists for this stage (paths into the results, fnmatch patterns).
HEADLINE = ("saes.*.quality.explained_variance", "saes.*.quality.l0", "saes.*.quality.dead_fraction",
            "saes.*.quality.ce_loss_recovered", "saes.*.quality.answer_accuracy_*", "corpus.n_train_windows")


@torch.no_grad()
def collect_activations(model, windows: Int[Tensor, "window pos"], hook: str,
                        batch_size: int = 32) -> Float[Tensor, "token d_in"]:
    """Activations at `hook` for every position but the first (the attention sink, whose
    norm is an outlier), running the model only as far as the hook's block."""
    store: list[Tensor] = []

    def keep(x: Tensor, hook) -> None:
        store.append(x[:, 1:].reshape(-1, x.shape[-1]).cpu())

    for start in progress(range(0, len(windows), batch_size), f"activations at {hook}"):
        model.run_with_hooks(windows[start : start + batch_size].to(model.cfg.device),
                             stop_at_layer=hook_layer(hook) + 1, fwd_hooks=[(hook, keep)])
    return torch.cat(store)


def shuffled_batches(activations: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless epochs of the activations in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(activations), generator=generator)
        for start in range(0, len(activations) - batch_size + 1, batch_size):
            yield activations[order[start : start + batch_size]]


def train_topk_sae(activations: Float[Tensor, "token d_in"], d_sae: int, k: int, lr: float, batch_size: int,
                   epochs: int, seed: int, device: str = "cpu"):
    """A TopK SAE fitted by sae_lens' SAETrainer; returns the inference SAE."""
    from sae_lens import SAE, LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(seed)
    cfg = TopKTrainingSAEConfig(d_in=activations.shape[1], d_sae=d_sae, k=k, device=device,
                                normalize_activations="expected_average_only_in")
    sae = TopKTrainingSAE(cfg)
    steps = epochs * (len(activations) // batch_size)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
        lr=lr, lr_end=lr / 10, lr_scheduler_name="constant", lr_warm_up_steps=min(50, steps // 10),
        lr_decay_steps=steps // 5, device=device, n_batches_for_norm_estimate=min(50, steps),
        dead_feature_window=max(steps // 5, 1), feature_sampling_window=max(steps // 2, 1),
        logger=LoggingConfig(log_to_wandb=False),
    )
    SAETrainer(trainer_cfg, sae, shuffled_batches(activations.to(device), batch_size, seed)).fit()
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=device)


# --- quality ---------------------------------------------------------------------------

@torch.no_grad()
def _next_token_loss(model, windows: Tensor, hooks: list) -> float:
    total, count = 0.0, 0
    for start in progress(range(0, len(windows), 16), "next-token loss"):
        batch = windows[start : start + 16].to(model.cfg.device)
        logprobs = model.run_with_hooks(batch, fwd_hooks=hooks).log_softmax(-1)
        picked = logprobs[:, 1:-1].gather(-1, batch[:, 2:, None])[..., 0]  # predictions from position 1 on
        total += -picked.sum().item()
        count += picked.numel()
    return total / count


@torch.no_grad()
def _family_accuracy(model, prepared: list[PreparedPrompt], hooks: list) -> float:
    predicted = run_by_length(prepared, lambda tokens, _: final_logits(model, tokens, hooks).argmax(-1))
    correct = torch.tensor([p.answers["correct"].first_token_id for p in prepared])
    return int((predicted == correct).sum()) / len(prepared)


@torch.no_grad()
def evaluate_sae(model, sae, hook: str, heldout: Tensor, params: Params) -> tuple[Quality, dict[str, Tensor]]:
    acts = collect_activations(model, heldout, hook)
    latents = sae.encode(acts.to(sae.device))
    recon = sae.decode(latents).cpu()
    residual = ((acts - recon) ** 2).sum()
    variance = ((acts - acts.mean(0)) ** 2).sum()
    fired = (latents > 0).cpu()
    clean = _next_token_loss(model, heldout, [])
    spliced = _next_token_loss(model, heldout, [(hook, splice(sae, error=False))])
    zeroed = _next_token_loss(model, heldout, [(hook, lambda x, hook: torch.cat([x[:, :1], 0 * x[:, 1:]], 1))])
    _, family = prepare_family(model, params.family)
    acc_clean = _family_accuracy(model, family, [])
    acc_spliced = _family_accuracy(model, family, [(hook, splice(sae, error=False))])
    quality = Quality(
        explained_variance=(1 - residual / variance).item(),
        l0=fired.sum(-1).double().mean().item(),
        dead_fraction=(~fired.any(0)).double().mean().item(),
        ce_loss_clean=clean, ce_loss_spliced=spliced, ce_loss_zero_ablated=zeroed,
        ce_loss_recovered=(zeroed - spliced) / (zeroed - clean),
        answer_accuracy_clean=acc_clean, answer_accuracy_spliced=acc_spliced,
        n_heldout_tokens=len(acts), n_family_prompts=len(family),
    )
    stats = {"mean_activation": latents.mean(0).cpu(), "firing_rate": fired.double().mean(0).float()}
    return quality, stats


# --- results ---------------------------------------------------------------------------

def train_or_load(model, key: str, name: str, spec: SaeParams, params: Params, corpus: Corpus, folder: Path):
    """One SAE: trained on the corpus and saved to `folder`, or loaded from the hub (and
    named in folder/source.json). Returns (sae, training settings or None)."""
    settings = params.sae_train
    if spec.source == "pretrained":
        sae = load_sae(key, name, spec, folder.parent, device=model.cfg.device)
        (folder / "source.json").write_bytes(to_json_bytes({"release": spec.release, "sae_id": spec.sae_id}))
        return sae, None
    acts = collect_activations(model, corpus.train, spec.hook)
    sae = train_topk_sae(acts, spec.d_sae, settings.k, settings.lr, settings.batch_size,
                         settings.epochs, settings.seed, device=model.cfg.device)
    sae.save_model(folder)
    return sae, {"architecture": "topk", "k": settings.k, "lr": settings.lr,
                 "batch_size": settings.batch_size, "epochs": settings.epochs, "seed": settings.seed}


def corpus_record(corpus: Corpus, params: Params) -> CorpusRecord:
    return CorpusRecord(
        prose_source=PROSE_SOURCE, prose_sha256=corpus.prose_sha256, python_version=PROSE_PYTHON,
        context_size=params.sae_train.corpus.context_size, n_train_windows=len(corpus.train),
        n_heldout_windows=len(corpus.heldout), n_prose_train_windows=int((corpus.source == 0).sum()),
        n_arithmetic_train_windows=int((corpus.source == 1).sum()),
    )


def run(model, params: Params, key: str, paths: StagePaths) -> SaeTrainMetrics:
    c = params.sae_train.corpus
    corpus = build_corpus(model, c.context_size, c.prose_windows, c.arithmetic_windows, c.heldout_fraction,
                          params.family.max_operand, c.seed, prose_sha256=c.prose_sha256)
    records = {}
    with tempfile.TemporaryDirectory() as staging:
        for name, spec in params.model(key).saes.items():
            folder = Path(staging) / name
            folder.mkdir()
            sae, training = train_or_load(model, key, name, spec, params, corpus, folder)
            if (sae.cfg.d_in, sae.cfg.d_sae) != (spec.d_in, spec.d_sae):
                raise ValueError(f"SAE {name}: loaded d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}; params.yaml "
                                 f"models.{key}.saes.{name} declares d_in={spec.d_in}, d_sae={spec.d_sae}")
            quality, stats = evaluate_sae(model, sae, spec.hook, corpus.heldout, params)
            save_tensors(folder / "stats.safetensors", stats)
            records[name] = SaeRecord(
                source=spec.source, hook=spec.hook, d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae,
                architecture=sae.cfg.architecture(), release=spec.release, sae_id=spec.sae_id,
                neuronpedia=spec.neuronpedia, training=training, quality=quality,
            )
        atomic_write_dir(paths.dir, lambda tmp: [shutil.copytree(Path(staging) / n, tmp / n) for n in records])
    metrics = SaeTrainMetrics(model=key, corpus=corpus_record(corpus, params), saes=records)
    save_json(paths.results, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, run, HEADLINE, argv)


if __name__ == "__main__":
    main()
