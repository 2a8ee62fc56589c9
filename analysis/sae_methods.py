"""SAE methods that several stages share: activations at a hook, training a TopK SAE with
sae_lens' trainer, its quality on held-out windows, and reading latents at the final
position with their decoder directions' direct logit effects. Pure functions of a model,
an SAE and tensors; no stage's results are read or written here.

Used by the stages sae_train (training, quality), sae (reading latents) and sae_seeds
(all of it, for the other seeds).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analysis.params import Params, hook_layer
from analysis.prompts import PreparedPrompt, prepare_family, run_by_length
from analysis.saes import Quality, splice
from analysis.scoring import final_logits
from analysis.timing import progress


# --- training ----------------------------------------------------------------------------

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



# --- quality -----------------------------------------------------------------------------

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


# --- reading latents ---------------------------------------------------------------------

@torch.no_grad()
def final_latents(model, sae, hook: str, tokens: Int[Tensor, "pos"]) -> Float[Tensor, "d_sae"]:
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:  # a hook that returns None leaves the activation alone
        store["x"] = x[0, -1]

    model.run_with_hooks(tokens[None].to(model.cfg.device), stop_at_layer=hook_layer(hook) + 1,
                         fwd_hooks=[(hook, keep)])
    return sae.encode(store["x"][None])[0].cpu()


@torch.no_grad()
def decoder_directions(sae, ids: list[int]) -> Float[Tensor, "feature d_in"]:
    """What one unit of each latent adds to the activation (decode is affine in the latents)."""
    units = torch.zeros(len(ids), sae.cfg.d_sae, device=sae.device)
    units[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    return (sae.decode(units) - sae.decode(torch.zeros_like(units))).cpu()


@torch.no_grad()
def final_norm_scale(model, tokens: Int[Tensor, "pos"]) -> float:
    _, cache = model.run_with_cache(tokens[None].to(model.cfg.device), names_filter="ln_final.hook_scale")
    return cache["ln_final.hook_scale"][0, -1].item()


@torch.no_grad()
def direct_logit_effects(model, directions: Float[Tensor, "feature d_model"], scale: float
                         ) -> Float[Tensor, "feature vocab"]:
    """Each direction's direct effect on the logits: through the final norm at a fixed scale."""
    directions = directions.to(model.cfg.device)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        directions = directions - directions.mean(-1, keepdim=True)
    return ((directions / scale) @ model.W_U.contiguous()).cpu()  # row-major, whatever its storage (store_transposed)
