"""analysis/causal.py on tiny models: whole-answer LD, tail runs on cached prefixes against
whole runs, patching both ways, attribution where it is exact, ablations and controls."""

import pytest
import torch
from helpers import rotary_model, tiny_model

from analysis import causal, prefix_attention
from analysis.arithmetic import placed_pairs
from analysis.causal import PairBatch, answer_outcome, make_batch
from analysis.prompts import equal_length_batches, prepare_prompt


def pair_batch(model, n: int = 6, seed: int = 0) -> PairBatch:
    """The first equal-length group of `n` copy pairs (W the answer of every example)."""
    contexts = []
    for pair in placed_pairs(n, 3, (0, 1, 2), 9, seed):
        answers = {"error": f" {pair.error}", "correct": f" {pair.correct}"}
        corrupt, clean = (prepare_prompt(model, p.text, answers) for p in (pair.corrupt, pair.clean))
        if len(corrupt.tokens) == len(clean.tokens) and corrupt.first_token_ids[0] != corrupt.first_token_ids[1]:
            contexts.append((corrupt, clean))
    group = next(iter(equal_length_batches([len(c.tokens) for c, _ in contexts])))
    chosen = [contexts[i] for i in group]
    return make_batch([c.tokens for c, _ in chosen], [k.tokens for _, k in chosen],
                      [(c.answers["error"].token_ids, c.answers["correct"].token_ids) for c, _ in chosen])


def whole_ld(model, batch: PairBatch, side: str = "corrupt", hooks=None, continuing=None) -> torch.Tensor:
    """LD from plain whole runs of context + answer, with hooks on every position."""
    continuing = causal.continues_number(model) if continuing is None else continuing
    with model.hooks(fwd_hooks=hooks or []):
        logits = model(batch.full(side))
    return answer_outcome(logits, batch, continuing, offset=batch.corrupt.shape[1] - 1).ld[0]


@pytest.fixture(scope="module", params=["absolute", "rotary"])
def setup(request):
    model = tiny_model(n_layers=3) if request.param == "absolute" else rotary_model()
    batch = pair_batch(model)
    return model, batch, causal.prepare_runs(model, batch)


def test_the_whole_answer_ld_sums_token_log_probabilities_and_the_end_of_the_number():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5)  # rows: W of two pairs, then C; 3 positions; vocab 5
    batch = PairBatch(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long),
                      torch.tensor([[[1, 2], [3, 3]], [[4, 4], [2, 1]]]), torch.tensor([[2, 1], [1, 2]]))
    continuing = torch.tensor([False, True, True, False, False])
    out = answer_outcome(logits, batch, continuing)
    lp = logits.log_softmax(-1)

    def whole(row, tokens):
        end = 1 - lp[row, len(tokens)].exp()[continuing].sum()
        return sum(lp[row, j, t] for j, t in enumerate(tokens)) + end.log()

    expected = torch.tensor([whole(0, [1, 2]) - whole(2, [3]), whole(1, [4]) - whole(3, [2, 1])])
    torch.testing.assert_close(out.ld[0], expected)
    greedy = logits.argmax(-1)
    assert out.error[0, 0] == (greedy[0, 0] == 1 and greedy[0, 1] == 2 and not continuing[greedy[0, 2]])


def test_tail_runs_on_the_cached_prefix_equal_whole_runs(setup):
    model, batch, runs = setup
    for side in causal.SIDES:
        torch.testing.assert_close(runs.base[side].ld[0], whole_ld(model, batch, side), atol=1e-5, rtol=0)
    assert (runs.base["corrupt"].ld - runs.base["clean"].ld).abs().max() > 1e-3  # the sides differ


def test_component_patching_both_ways_equals_hooks_on_whole_runs(setup):
    model, batch, runs = setup
    pos = batch.corrupt.shape[1]
    nodes = [(0, None), (1, 2), (2, None), (2, 3)]
    fast = causal.compute_component_patching(model, runs, nodes)
    for direction, (target, source) in enumerate((("corrupt", "clean"), ("clean", "corrupt"))):
        _, cache = model.run_with_cache(batch.full(source))
        for i, (layer, head) in enumerate(nodes):
            name = causal._component_hook(layer, head)

            def put(act, hook, name=name, head=head):
                act = act.clone()
                if head is None:
                    act[:, pos - 1] = cache[name][:, pos - 1]
                else:
                    act[:, pos - 1, head] = cache[name][:, pos - 1, head]
                return act

            torch.testing.assert_close(fast[direction, :, i], whole_ld(model, batch, target, [(name, put)]),
                                       atol=1e-5, rtol=0)
    assert (fast[0] - runs.base["corrupt"].ld[0][:, None]).abs().max() > 1e-3


def test_patching_every_context_position_before_the_first_layer_gives_the_other_run(setup):
    """Sites are context positions; the answer's tokens, the same on both sides, are run on
    top. Before block 0 the answer's stream is its embedding, so this is the other run;
    later it carries what the unpatched context wrote into it, so it is not."""
    model, batch, runs = setup
    everywhere = torch.ones_like(batch.changed)
    patched = causal.compute_resid_patching(model, runs, [everywhere])[..., 0]  # (direction, pair, layer)
    torch.testing.assert_close(patched[0, :, 0], runs.base["clean"].ld[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(patched[1, :, 0], runs.base["corrupt"].ld[0], atol=1e-5, rtol=0)
    unchanged = causal.compute_resid_patching(model, runs, [torch.zeros_like(batch.changed)])[..., 0]
    torch.testing.assert_close(unchanged[0], runs.base["corrupt"].ld[0][:, None].expand_as(unchanged[0]), atol=1e-5,
                               rtol=0)


def test_attribution_equals_exact_patching_where_ld_is_linear_in_the_component():
    """Without a final norm, and with single-token answers and no token continuing them, LD
    is a logit difference: linear in the last MLP's and last heads' outputs."""
    model = tiny_model(n_layers=2, normalization=None, seed=3)
    batch = pair_batch(model)
    batch = PairBatch(batch.corrupt, batch.clean, batch.answers[:, :, :1], torch.ones_like(batch.lengths))
    runs = causal.prepare_runs(model, batch, continuing=torch.zeros(model.cfg.d_vocab, dtype=torch.bool))
    attr = causal.compute_attribution(model, runs)
    exact = causal.compute_component_patching(model, runs, [(1, None), *((1, h) for h in range(4))])[0]
    exact = exact - runs.base["corrupt"].ld[0][:, None]
    torch.testing.assert_close(attr.mlp[:, 1], exact[:, 0], atol=1e-4, rtol=1e-4)
    assert exact.abs().max() > 1e-3


def test_ablating_no_head_changes_nothing_and_a_head_as_a_hook_on_whole_runs_does(setup):
    model, batch, runs = setup
    values = causal.mean_head_outputs(model, runs)
    masks = torch.stack([causal.head_mask(3, 4, []), causal.head_mask(3, 4, [(1, 2), (2, 0)])])
    masks[0, 2, 3] = False
    out = causal.ablate_heads(model, runs, masks[1:], values)
    pos = batch.corrupt.shape[1]

    def put(z, hook):
        z = z.clone()
        for layer, head in ((1, 2), (2, 0)):
            if hook.name == f"blocks.{layer}.attn.hook_z":
                z[:, pos - 1, head] = values[layer, head]
        return z

    hooks = [(f"blocks.{l}.attn.hook_z", put) for l in (1, 2)]
    torch.testing.assert_close(out.ld[0], whole_ld(model, batch, "corrupt", hooks), atol=1e-5, rtol=0)


def test_layer_matched_random_sets_keep_the_layers_and_leave_out_the_chosen_heads():
    chosen = [(1, 0), (1, 3), (4, 2)]
    sets = causal.layer_matched_sets(chosen, 9, 200, seed=5)
    assert sets == causal.layer_matched_sets(chosen, 9, 200, seed=5) and len(sets) == 200
    for heads in sets:
        assert sorted(l for l, _ in heads) == [1, 1, 4] and not set(heads) & set(chosen)
        assert len(set(heads)) == 3
    assert len({tuple(s) for s in sets}) > 50  # they vary


def test_the_controlled_ablation_returns_the_chosen_set_and_every_draw_for_every_pair(setup):
    model, batch, runs = setup
    values = causal.mean_head_outputs(model, runs)
    observed, random = causal.controlled_ablation(model, [runs, runs], [(1, 1), (2, 3)], [values, values], draws=7,
                                                  seed=0, rows=6 * runs.n)  # three draws a run
    assert observed.ld.shape == (1, 2 * runs.n) and random.ld.shape == (7, 2 * runs.n)
    torch.testing.assert_close(observed.ld[0, : runs.n], observed.ld[0, runs.n:])
    again = causal.ablate_heads(model, runs, causal.head_mask(3, 4, [(1, 1), (2, 3)])[None], values)
    torch.testing.assert_close(observed.ld[:, : runs.n], again.ld)


def test_copies_sharing_one_prefix_give_what_each_copy_gives_on_its_own_cache(setup):
    model, batch, runs = setup
    values = causal.mean_head_outputs(model, runs)
    sets = [[(0, 1)], [(1, 2), (2, 0)], [(2, 3)], []]
    masks = torch.stack([causal.head_mask(3, 4, s) for s in sets])
    together = causal.ablate_heads(model, runs, masks, values)  # one run, the prefix shared by four copies
    assert prefix_attention.supported(model)
    for i in range(len(sets)):  # alone: TransformerLens' own cached attention; no head ablated: the plain run
        alone = causal.ablate_heads(model, runs, masks[i: i + 1], values) if sets[i] else runs.base["corrupt"]
        torch.testing.assert_close(together.ld[i], alone.ld[0], atol=1e-5, rtol=0)
        assert torch.equal(together.error[i], alone.error[0]) and torch.equal(together.correct[i], alone.correct[0])
    assert (together.ld[1] - together.ld[3]).abs().max() > 1e-3  # the copies differ


def test_the_shared_prefix_refuses_hooks_that_would_see_only_the_tail(setup):
    model, _, runs = setup
    with model.hooks(fwd_hooks=[("blocks.2.attn.hook_pattern", lambda p, hook: p)]), pytest.raises(ValueError):
        with prefix_attention.shared_prefix(model, runs.prefix["corrupt"], 2, 1):
            pass
    assert "forward" not in vars(model.blocks[2].attn)  # the class's forward again


def test_the_outcome_read_in_chunks_of_rows_equals_the_outcome_of_whole_logits(setup):
    model, batch, runs = setup
    resid = causal.tail_resid(model, runs, ["corrupt", "corrupt", "corrupt"], 1)
    whole = answer_outcome(model.unembed(model.ln_final(resid)), batch, runs.continuing)
    for chunk in (1, 5, 1000):
        read = causal.resid_outcome(model, resid, batch, runs.continuing, chunk=chunk)
        torch.testing.assert_close(read.ld, whole.ld, atol=1e-5, rtol=0)
        assert torch.equal(read.error, whole.error) and torch.equal(read.correct, whole.correct)
    torch.testing.assert_close(whole.ld, runs.base["corrupt"].ld.repeat(3, 1), atol=1e-5, rtol=0)


def test_attention_with_a_soft_cap_or_its_result_kept_is_left_to_transformer_lens():
    model = tiny_model(n_layers=1)
    assert prefix_attention.supported(model) and prefix_attention.supported(rotary_model(n_layers=1))
    model.cfg.attn_scores_soft_cap = 50.0
    assert not prefix_attention.supported(model)
    model.cfg.attn_scores_soft_cap, model.cfg.use_attn_result = -1.0, True
    assert not prefix_attention.supported(model)
