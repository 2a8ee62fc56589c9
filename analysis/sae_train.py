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
from pathlib import Path


from analysis.artifacts import StagePaths, atomic_write_dir, save_json, save_tensors, to_json_bytes
from analysis.corpus import PROSE_PYTHON, PROSE_SOURCE, Corpus, build_corpus
from analysis.params import Params, SaeParams
from analysis.sae_methods import collect_activations, evaluate_sae, train_topk_sae
from analysis.saes import STAGE, CorpusRecord, SaeRecord, SaeTrainMetrics, load_sae
from analysis.stage import run_stage

# What `dvc metrics show` lists for this stage (paths into the results, fnmatch patterns).
HEADLINE = ("saes.*.quality.explained_variance", "saes.*.quality.l0", "saes.*.quality.dead_fraction",
            "saes.*.quality.ce_loss_recovered", "saes.*.quality.answer_accuracy_*", "corpus.n_train_windows")


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
