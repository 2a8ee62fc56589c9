"""Patching and ablation invariants on tiny models, and the error-set generators."""

import pytest
import torch
from helpers import char_tokenizer, gpt2_tokenizer, make_params, random_sae, rotary_model, tiny_model

from analysis import patching
from analysis.arithmetic import copy_pairs, sequence_pairs
from analysis.patching import PairBatch
from analysis.prompts import prepare_prompt


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3)


def _batch(model, n: int = 6) -> PairBatch:
    pairs, prepared = patching.prepare_pairs(model, copy_pairs(n, 2, 9, seed=0))
    (_, batch), *_ = patching.batches(prepared)
    return batch


def test_patching_clean_into_clean_changes_nothing(model):
    batch = _batch(model)
    clean = PairBatch(batch.clean, batch.clean, batch.error_ids, batch.correct_ids)
    base = patching.logit_diff_at_end(model, clean)
    sites = patching._sites(clean, 3)
    assert not sites[0].any()  # nothing differs between a prompt and itself
    patched = patching.compute_resid_patching(model, clean, sites)  # both directions
    torch.testing.assert_close(patched, base[None, :, None, None].expand_as(patched), atol=1e-5, rtol=0)
    components = patching.compute_component_patching(model, clean, [(0, None), (2, 1)])
    torch.testing.assert_close(components, base[None, :, None].expand_as(components), atol=1e-5, rtol=0)


def test_patching_the_whole_residual_stream_at_a_layer_gives_the_clean_output(model):
    batch = _batch(model)
    clean = patching.logit_diff_at_end(model, PairBatch(batch.clean, batch.clean, batch.error_ids, batch.correct_ids))
    corrupt = patching.logit_diff_at_end(model, batch)
    everywhere = torch.ones_like(batch.changed)
    patched, noised = patching.compute_resid_patching(model, batch, [everywhere])[..., 0]  # each (pair, layer)
    torch.testing.assert_close(patched, clean[:, None].expand_as(patched), atol=1e-5, rtol=0)
    torch.testing.assert_close(noised, corrupt[:, None].expand_as(noised), atol=1e-5, rtol=0)
    assert (clean - corrupt).abs().max() > 1e-3  # the two runs differ, so the test can fail


@pytest.mark.parametrize("positions", ["absolute", "rotary"])
def test_runs_of_the_last_positions_on_the_cached_prefix_equal_whole_runs(positions):
    """Both directions: direction 0 patches the clean run's activations into the corrupt
    run, direction 1 the corrupt run's into the clean run; whole runs with hooks agree."""
    model = tiny_model(n_layers=3) if positions == "absolute" else rotary_model()
    batch = _batch(model)
    runs = [model.run_with_cache(tokens)[1] for tokens in (batch.clean, batch.corrupt)]  # the source of each direction
    targets = [batch, PairBatch(batch.clean, batch.corrupt, batch.error_ids, batch.correct_ids)]

    components = [(0, None), (1, 2), (2, None), (2, 3)]
    fast = patching.compute_component_patching(model, batch, components)
    for direction, (source, target) in enumerate(zip(runs, targets, strict=True)):
        for i, (layer, head) in enumerate(components):
            name = patching._component_name(layer, head)
            value = source[name][:, -1] if head is None else source[name][:, -1, head]
            whole = patching.logit_diff_at_end(model, target, hooks=patching._final_position_patch(name, value, head))
            torch.testing.assert_close(fast[direction, :, i], whole, atol=1e-5, rtol=0)
    assert (fast[0] - patching.logit_diff_at_end(model, batch)[:, None]).abs().max() > 1e-3

    sites = patching._sites(batch, 2)
    fast = patching.compute_resid_patching(model, batch, sites)
    for direction, (source, target) in enumerate(zip(runs, targets, strict=True)):
        for layer in range(3):
            for i, mask in enumerate(sites):
                name = f"blocks.{layer}.hook_resid_pre"

                def put(act, hook, mask=mask, name=name, source=source):
                    return torch.where(mask[..., None], source[name], act)

                whole = patching.logit_diff_at_end(model, target, hooks=[(name, put)])
                torch.testing.assert_close(fast[direction, :, layer, i], whole, atol=1e-5, rtol=0)


def test_attribution_equals_exact_patching_where_the_metric_is_linear():
    """No final norm: the last MLP's output reaches the logits linearly, and so do the last
    layer's heads in an attention-only model."""
    with_mlp = tiny_model(n_layers=2, normalization=None, seed=3)
    batch = _batch(with_mlp)
    attr = patching.compute_attribution(with_mlp, batch)
    corrupt = patching.logit_diff_at_end(with_mlp, batch)
    exact = patching.compute_component_patching(with_mlp, batch, [(1, None)])[0, :, 0] - corrupt
    torch.testing.assert_close(attr.mlp[:, 1], exact, atol=1e-4, rtol=1e-4)
    assert exact.abs().max() > 1e-3

    attn_only = tiny_model(n_layers=2, normalization=None, seed=3, attn_only=True)
    attr = patching.compute_attribution(attn_only, batch)
    corrupt = patching.logit_diff_at_end(attn_only, batch)
    exact = patching.compute_component_patching(attn_only, batch, [(1, h) for h in range(4)])[0] - corrupt[:, None]
    torch.testing.assert_close(attr.heads[:, 1], exact, atol=1e-4, rtol=1e-4)
    assert exact.abs().max() > 1e-3


def test_ablation_values_zero_mean_and_resample_from_another_pair(model):
    batch = _batch(model)
    z = patching.head_outputs(model, batch.clean)  # (layer, head, batch, pos, d_head)
    values = patching.ablation_values(model, batch.clean)
    torch.testing.assert_close(values["mean"], z.mean(2))
    torch.testing.assert_close(values["resample"][:, :, 1:], z[:, :, :-1])
    torch.testing.assert_close(values["resample"][:, :, 0], z[:, :, -1])
    assert values["zero"].abs().max() == 0
    zeroed = patching.ablate(model, [(list(range(len(batch.corrupt))), batch)], len(batch.corrupt), [(1, 2)],
                                [values["zero"]])

    def zero(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    torch.testing.assert_close(zeroed, patching.logit_diff_at_end(model, batch, hooks=[("blocks.1.attn.hook_z", zero)]))


def test_greedy_answers_under_an_ablation_apply_it_to_the_context_only(model):
    from analysis.scoring import greedy_answers, greedy_under_hooks

    batch = _batch(model)
    assert greedy_under_hooks(model, batch.corrupt, []) == greedy_answers(model, list(batch.corrupt))[1]

    def zero(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    hooked = greedy_under_hooks(model, batch.corrupt, [("blocks.1.attn.hook_z", zero)], max_tokens=2)
    context = batch.corrupt.shape[1]

    def zero_context(z, hook):  # the same ablation on a whole run, at the context's positions only
        z = z.clone()
        z[:, :context, 2] = 0
        return z

    first = model.run_with_hooks(batch.corrupt, fwd_hooks=[("blocks.1.attn.hook_z", zero)])[:, -1].argmax(-1)
    grown = torch.cat([batch.corrupt, first[:, None]], dim=1)
    second = model.run_with_hooks(grown, fwd_hooks=[("blocks.1.attn.hook_z", zero_context)])[:, -1].argmax(-1)
    assert hooked == [model.tokenizer.decode([a, b]) for a, b in zip(first.tolist(), second.tolist(), strict=True)]
    assert hooked != greedy_under_hooks(model, batch.corrupt, [], max_tokens=2)  # the ablation changes answers


def test_latent_attribution_equals_patching_the_latent_where_the_metric_is_linear():
    """An SAE on the last residual stream of a model without a final norm: LD is linear in
    each latent, so attribution patching of a latent is exact."""
    model = tiny_model(n_layers=2, normalization=None, seed=3)
    batch, hook = _batch(model), "blocks.1.hook_resid_post"
    sae = random_sae(32, 64, seed=1)
    attribution, activation = patching.compute_latent_attribution(model, sae, hook, batch)
    corrupt = patching.logit_diff_at_end(model, batch)
    latents = attribution[0].abs().argsort(descending=True)[:3].tolist()
    for latent in latents:
        exact = patching.edit_latents(model, sae, hook, batch, [latent], "clean") - corrupt
        torch.testing.assert_close(attribution[:, latent], exact, atol=1e-4, rtol=1e-4)
    assert attribution[:, latents].abs().max() > 1e-3 and activation.shape == (len(batch.corrupt), 64)
    # the SAE is spliced in with its error term: editing nothing leaves the run as it was
    torch.testing.assert_close(patching.edit_latents(model, sae, hook, batch, [], "zero"), corrupt, atol=1e-5, rtol=0)


def test_random_latents_match_the_chosen_ones_in_activation_rank():
    activation = torch.rand(200, generator=torch.Generator().manual_seed(0))
    chosen = [int(activation.argmax()), int(activation.argsort()[100])]
    sets = patching.matched_latent_sets(activation, chosen, window=5, draws=10, seed=1)
    assert sets == patching.matched_latent_sets(activation, chosen, window=5, draws=10, seed=1)
    assert len({tuple(s) for s in sets}) > 1
    rank = activation.argsort().argsort()
    for picked in sets:
        assert not set(picked) & set(chosen) and len(set(picked)) == 2
        assert all(abs(int(rank[p]) - int(rank[c])) <= 5 for p, c in zip(picked, chosen, strict=True))


def test_path_patching_splits_a_heads_effect_into_its_direct_path_and_its_paths_through_later_heads():
    """Attention-only, no norm, two layers: the logits are linear in every head's output, so
    patching a layer-0 head moves LD by its direct effect plus its effect through each
    layer-1 head, exactly."""
    model = tiny_model(n_layers=2, normalization=None, seed=5, attn_only=True)
    with torch.no_grad():  # larger attention weights, so that the paths through layer 1 matter
        for name, weight in model.named_parameters():
            if "attn.W" in name:
                weight.mul_(4)
    batch = _batch(model)
    nodes = [(0, 1), (0, 2), *((1, h) for h in range(4))]
    direct, edges = patching.compute_path_patching(model, batch, nodes)
    corrupt = patching.logit_diff_at_end(model, batch)
    total = patching.compute_component_patching(model, batch, nodes[:2])[0] - corrupt[:, None]
    through = (edges[:, :2, 2:] - corrupt[:, None, None]).sum(-1)
    torch.testing.assert_close(total, direct[:, :2] - corrupt[:, None] + through, atol=1e-4, rtol=1e-4)
    assert through.abs().max() > 1 and (direct[:, :2] - corrupt[:, None]).abs().max() > 0.1
    # layer-1 heads are last: their whole effect is direct, and they reach no other node
    torch.testing.assert_close(direct[:, 2:] - corrupt[:, None],
                               patching.compute_component_patching(model, batch, nodes[2:])[0] - corrupt[:, None])
    assert edges[:, 2:].isnan().all() and edges[:, :, :2].isnan().all() and not edges[:, :2, 2:].isnan().any()


def test_which_nodes_can_reach_which():
    assert patching.can_reach((3, 0), (3, None))  # a head writes before its layer's MLP reads
    assert not patching.can_reach((3, 0), (3, 1))
    assert patching.can_reach((3, None), (4, 2)) and not patching.can_reach((3, None), (3, None))
    assert not patching.can_reach((4, 0), (3, None))


def test_mean_ablation_over_one_prompt_equals_patching_that_prompt(model):
    batch = _batch(model)
    one = PairBatch(batch.corrupt[:1], batch.clean[:1], batch.error_ids[:1], batch.correct_ids[:1])
    heads = [(0, 1), (2, 3)]
    ld = patching.ablate(model, [([0], one)], 1, heads, [patching.ablation_values(model, one.clean)["mean"]])
    _, clean = model.run_with_cache(one.clean, names_filter=lambda n: n.endswith("attn.hook_z"))

    def patch(layer: int, head: int):
        def hook(z, hook):
            z = z.clone()
            z[:, :, head] = clean[f"blocks.{layer}.attn.hook_z"][:, :, head]
            return z
        return (f"blocks.{layer}.attn.hook_z", hook)

    patched = patching.logit_diff_at_end(model, one, hooks=[patch(*h) for h in heads])
    torch.testing.assert_close(ld, patched, atol=1e-5, rtol=0)
    assert (patched - patching.logit_diff_at_end(model, one)).abs().max() > 1e-4


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_the_sequence_set_separates_next_term_copies_and_the_correct_answer(tokenizer):
    model = tiny_model(char_tokenizer() if tokenizer == "char" else gpt2_tokenizer(), n_layers=1)
    for pair in sequence_pairs(40, 9, seed=1):
        s1, s2 = pair.corrupt.shot_answers
        assert s2 - s1 != 0 and pair.error == 2 * s2 - s1
        clean = pair.clean.shot_answers
        assert 2 * clean[1] - clean[0] != pair.error
        answers = {"next": f" {pair.error}", "copy_last": f" {s2}", "copy_first": f" {s1}", "correct": f" {pair.correct}"}
        firsts = prepare_prompt(model, pair.corrupt.text, answers).first_token_ids
        assert len(set(firsts)) == 4, (pair, firsts)


def test_copy_pairs_match_digit_counts_and_every_example_answers_the_error():
    for pair in copy_pairs(40, 3, 9, seed=4):
        assert set(pair.corrupt.shot_answers) == {pair.error} and pair.error != pair.correct
        assert pair.corrupt.query == pair.clean.query
        assert [len(str(a)) for a in pair.corrupt.shot_answers] == [len(str(a)) for a in pair.clean.shot_answers]
        assert str(pair.error)[0] not in {str(a)[0] for a in pair.clean.shot_answers}
        assert len(pair.corrupt.text) == len(pair.clean.text)


def test_impossible_set_sizes_are_refused_not_looped_on():
    with pytest.raises(ValueError, match="distinct prompt pairs"):
        sequence_pairs(10_000, 3, seed=0)


def test_random_control_draws_are_seeded_and_distinct():
    draws = patching.random_head_sets(3, 4, size=2, draws=20, seed=7)
    assert draws == patching.random_head_sets(3, 4, size=2, draws=20, seed=7)
    assert draws != patching.random_head_sets(3, 4, size=2, draws=20, seed=8)
    assert len({tuple(map(tuple, d)) for d in draws}) == 20
    assert all(len(set(d)) == 2 and all(0 <= l < 3 and 0 <= h < 4 for l, h in d) for d in draws)


def test_behaviour_reads_the_logit_difference_from_the_scoring_pass(model):
    pairs, prepared = patching.prepare_pairs(model, copy_pairs(6, 3, 9, seed=0))
    _, _, lds, _, _ = patching.behaviour_of(model, make_params(**{"stats.bootstrap_resamples": 100}), pairs, prepared)
    for idx, batch in patching.batches(prepared):
        torch.testing.assert_close(lds["corrupt"][idx], patching.logit_diff_at_end(model, batch), atol=1e-4, rtol=0)


def test_patching_runs_on_the_pairs_where_the_model_errs():
    assert patching.patched_subset(torch.tensor([0, 1, 0, 1, 1]).bool(), 2) == ([1, 3], "pairs where the model gives the error")
    chosen, why = patching.patched_subset(torch.tensor([0, 1, 0, 0]).bool(), 3)
    assert chosen == [0, 1, 2] and "too few errors" in why


def test_spearman():
    assert patching.spearman(torch.tensor([1.0, 2, 3]), torch.tensor([10.0, 20, 30])) == pytest.approx(1)
    assert patching.spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1)


def test_stage_on_a_tiny_model(model, tmp_path, monkeypatch):
    from analysis.artifacts import StagePaths

    sae = patching.LoadedSae(random_sae(32, 64), "blocks.1.hook_resid_pre", torch.rand(64))
    monkeypatch.setattr(patching, "load_saes", lambda *args: {"tiny": sae})
    # a random model rarely errs: take the first pairs as if it did, so every measurement runs
    monkeypatch.setattr(patching, "patched_subset", lambda errs, n: (list(range(min(n, len(errs)))), patching.ERRING))

    params = make_params(**{"patching.n_pairs": 8, "patching.n_patched": 6, "patching.random_draws": 3, "patching.top_heads": 4,
                            "patching.last_positions": 2, "stats.bootstrap_resamples": 200})
    metrics = patching.run(model, params, "tiny", StagePaths("tiny", "patching", root=tmp_path))
    loaded = patching.load_results(StagePaths("tiny", "patching", root=tmp_path))
    assert loaded == metrics and set(metrics.sets) == {"copy", "sequence"}
    for result in metrics.sets.values():
        assert result.n_pairs + result.n_dropped == 8
        assert len(result.resid_exact) == 3 and len(result.resid_exact[0]) == 3 == len(result.sites)
        exact = torch.tensor(result.resid_exact)
        assert exact[0, 0].item() == pytest.approx(1.0, abs=1e-4)  # layer 0, every changed token: the clean run
        for peak, values in ((result.resid_peak, exact), (result.resid_reverse_peak, torch.tensor(result.resid_reverse))):
            assert abs(peak.effect.mean) == pytest.approx(values.abs().max().item(), abs=1e-6)
            assert peak.effect.mean == pytest.approx(values[peak.layer, result.sites.index(peak.site)].item(), abs=1e-6)
            assert peak.effect.low <= peak.effect.mean <= peak.effect.high and peak.effect.n == result.n_patched
        assert len(result.top_heads) == 4 and -1 <= result.rank_agreement_mlp <= 1
        cases = result.cases
        assert cases.n_error + cases.n_right <= result.n_pairs and len(cases.lens_right) == 3
        assert len(cases.heads) == 4 == len(cases.attention_right)
        if cases.n_right >= 2:
            assert all(0 <= e.low <= e.mean <= e.high <= 1 for e in cases.attention_right)
        (latents,) = result.latents
        assert len(latents.top) == 5 and latents.attribution == sorted(latents.attribution, reverse=True)
        assert len(latents.random_ablated) == 3 and 1 / 4 <= latents.p_value <= 1
        circuit = result.circuit
        assert circuit is None or all(patching.can_reach(*(_node(e.sender), _node(e.receiver))) for e in circuit.edges)
        if result.ablation is not None:
            assert set(result.ablation.joint) == {"zero", "mean", "resample"}
            assert len(result.ablation.alone) == len(result.ablation.heads)


def _node(name: str) -> tuple[int, int | None]:
    if name.startswith("MLP"):
        return int(name[3:]), None
    layer, head = name[1:].split("H")
    return int(layer), int(head)


def test_doubles_contexts_hold_the_studys_prompt_and_never_an_answer_scored():
    contexts = patching.doubles_contexts("5 + 5 =", {10, 6})
    assert "1 + 1 = 2. 2 + 2 = 4. 5 + 5 =" in contexts
    assert len(contexts) == len(set(contexts)) == 8 * 7  # digits 0-9 but 3 and 5, ordered pairs
    for text in contexts:
        a, b = (int(shot.split(" + ")[0]) for shot in text.split(". ")[:2])
        assert a != b and text.endswith(". 5 + 5 =") and {2 * a, 2 * b}.isdisjoint({10, 6})
