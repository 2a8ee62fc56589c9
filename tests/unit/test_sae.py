"""SAE splicing, ablation and attribution: exact identities on tiny models and SAEs."""

import pytest
import torch
from helpers import char_tokenizer, make_params, random_sae, tiny_model

from analysis import corpus, sae, sae_methods, saes
from analysis.prompts import prepare_prompt

HOOK = "blocks.1.hook_resid_pre"
PROMPT = "1 + 1 = 2. 2 + 2 = 4. 5 + 5 ="


@pytest.fixture
def setup():
    model = tiny_model(char_tokenizer(), n_layers=2, seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    prepared = prepare_prompt(model, PROMPT, {"correct": " 10", "misconception": " 6"})
    return model, random_sae(32, 64, seed=2), prepared


@pytest.mark.parametrize("kind", ["standard", "topk"])
def test_spliced_sae_with_error_term_leaves_the_logits_unchanged(setup, kind):
    model, _, prepared = setup
    spliced_sae = random_sae(32, 64, kind=kind, seed=3)
    tokens = prepared.tokens[None]
    with torch.no_grad():
        clean = model(tokens)
        spliced = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, saes.splice(spliced_sae, first_position=0))])
        lossy = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, saes.splice(spliced_sae, error=False))])
    assert (spliced - clean).abs().max().item() <= 1e-4
    assert (lossy - clean).abs().max().item() > 1e-3  # without the error term, a random SAE does change them


def test_zeroing_a_latent_moves_the_residual_by_its_decoder_contribution(setup):
    model, random, prepared = setup
    x = torch.randn(1, 6, 32)
    latents = random.encode(x)
    feature = int(latents[0, -1].argmax())
    base = saes.splice(random)(x, None)
    ablated = saes.splice(random, edit=lambda z: z.index_fill(-1, torch.tensor([feature]), 0.0))(x, None)
    direction = sae_methods.decoder_directions(random, [feature])[0]
    expected = -latents[0, 1:, feature, None] * direction  # positions 1.. are spliced
    torch.testing.assert_close((ablated - base)[0, 1:], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(base, x, atol=1e-5, rtol=0)  # no edit: the activation itself
    assert (ablated - base)[0, 0].abs().max() == 0  # position 0 is left alone


@pytest.mark.parametrize("kind", ["logit_diff", "prob_diff"])
def test_attribution_gradient_matches_a_small_actual_perturbation(setup, kind):
    model, random, prepared = setup
    plus = prepared.answers["misconception"].first_token_id
    minus = prepared.answers["correct"].first_token_id
    result = sae.compute_attribution(model, random, HOOK, prepared.tokens, plus, minus, kind)
    active = (result.activations > 0).nonzero()[:, 0]
    assert len(active) > 0
    epsilon = 1e-2
    for feature in active[:3].tolist():
        def shifted(delta: float) -> float:
            def edit(z):
                z = z.clone()
                z[:, -1, feature] += delta  # the final position only (spliced tensors start at 0)
                return z
            hook = saes.splice(random, edit=edit, first_position=0)
            with torch.no_grad():
                logits = model.run_with_hooks(prepared.tokens[None], fwd_hooks=[(HOOK, hook)])[0, -1]
            return sae.metric_of(logits, plus, minus, kind).item()

        numeric = (shifted(epsilon) - shifted(-epsilon)) / (2 * epsilon)
        assert result.gradients[feature].item() == pytest.approx(numeric, rel=2e-2, abs=1e-5)
        assert result.attribution[feature] == pytest.approx(result.activations[feature] * result.gradients[feature])
    clean = model(prepared.tokens[None])[0, -1]
    assert result.metric == pytest.approx(sae.metric_of(clean, plus, minus, kind).item(), abs=1e-4)


def test_direct_logit_effects_follow_the_unembedding(setup):
    model, random, _ = setup
    directions = sae_methods.decoder_directions(random, [3, 5])
    effects = sae_methods.direct_logit_effects(model, directions, scale=2.0)
    centred = directions - directions.mean(-1, keepdim=True)  # the tiny model uses LayerNorm
    torch.testing.assert_close(effects, (centred / 2.0) @ model.W_U, atol=1e-5, rtol=1e-5)


def test_corpus_is_seeded_and_mixes_both_sources():
    model = tiny_model(char_tokenizer(), n_layers=1)
    built = corpus.build_corpus(model, context_size=32, prose_windows=20, arithmetic_windows=10,
                                heldout_fraction=0.1, max_operand=9, seed=0)
    again = corpus.build_corpus(model, 32, 20, 10, 0.1, 9, seed=0)
    assert torch.equal(built.train, again.train) and built.prose_sha256 == again.prose_sha256
    assert built.train.shape[1] == 32 and len(built.train) + len(built.heldout) == 30
    assert (built.train[:, 0] == model.tokenizer.bos_token_id).all()  # the tiny model uses BOS
    assert set(built.source.tolist()) == {0, 1}
    assert "python" in corpus.prose_text().lower() and len(corpus.prose_text()) > 100_000


def test_the_shipped_prose_is_the_pinned_text_and_a_changed_one_is_refused(tmp_path, params):
    import gzip

    text = corpus.prose_text(params.sae_train.corpus.prose_sha256)  # what params.yaml pins: no error
    changed = tmp_path / "prose.txt.gz"
    changed.write_bytes(gzip.compress(text.replace("Python", "Pithon", 1).encode(), mtime=0))
    with pytest.raises(corpus.CorpusError, match=r"prose\.txt\.gz: its text has SHA-256 [0-9a-f]{64}, but params"):
        corpus.prose_text(params.sae_train.corpus.prose_sha256, path=changed)
    changed.write_bytes(b"not gzip")
    with pytest.raises(corpus.CorpusError, match="cannot be read"):
        corpus.prose_text(path=changed)


def test_training_a_topk_sae_reduces_reconstruction_error():
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(16, 24, generator=generator)
    codes = (torch.rand(2048, 16, generator=generator) < 0.15) * torch.rand(2048, 16, generator=generator) * 3
    acts = codes @ basis  # sparse combinations of 16 directions
    trained = sae_methods.train_topk_sae(acts, d_sae=32, k=4, lr=0.004, batch_size=128, epochs=6, seed=0)
    with torch.no_grad():
        recon = trained.decode(trained.encode(acts))
    explained = 1 - ((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert explained > 0.8
    assert ((trained.encode(acts) > 0).sum(-1) <= 4).all()


def test_quality_numbers_match_their_definitions(setup):
    model, _, _ = setup
    params = make_params(**{"family.n_prompts": 4})
    windows = corpus.build_corpus(model, 32, 6, 4, 0.3, 9, seed=0).heldout
    random = random_sae(32, 64, seed=4)
    quality, stats = sae_methods.evaluate_sae(model, random, HOOK, windows, params)
    acts = sae_methods.collect_activations(model, windows, HOOK)
    assert quality.n_heldout_tokens == len(acts) == len(windows) * 31  # every position but the first
    with torch.no_grad():
        latents = random.encode(acts)
        recon = random.decode(latents)
    explained = 1 - ((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert quality.explained_variance == pytest.approx(explained.item(), rel=1e-5)
    assert quality.l0 == pytest.approx((latents > 0).sum(-1).double().mean().item())
    torch.testing.assert_close(stats["mean_activation"], latents.mean(0))
    recovered = (quality.ce_loss_zero_ablated - quality.ce_loss_spliced) / (
        quality.ce_loss_zero_ablated - quality.ce_loss_clean)
    assert quality.ce_loss_recovered == pytest.approx(recovered)
    assert quality.ce_loss_spliced != quality.ce_loss_clean  # a random SAE is lossy
    assert quality.n_family_prompts == 4 and 0 <= quality.answer_accuracy_spliced <= 1
