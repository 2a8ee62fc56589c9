"""analysis/circuit.py on tiny models: the whole graph is the corrupt run and the empty
circuit the clean one; one edge ablated alone is exact path patching; EAP-IG is exact
where LD is linear in the receiver and converges as its steps grow."""

import pytest
import torch
from helpers import rotary_model, tiny_model
from test_causal import pair_batch

from analysis import causal, circuit
from analysis.causal import PairBatch

NO_DIGITS = None  # set per model: no token continues a number, so LD is a logit difference


def _setup(model, single_token: bool = False):
    batch = pair_batch(model)
    if single_token:
        batch = PairBatch(batch.corrupt, batch.clean, batch.answers[:, :, :1], torch.ones_like(batch.lengths))
    equals = model.tokenizer.convert_tokens_to_ids("=")
    classes = circuit.position_classes(batch, equals)
    continuing = (torch.zeros(model.cfg.d_vocab, dtype=torch.bool) if single_token
                  else causal.continues_number(model))
    return batch, classes, continuing, circuit.clean_run(model, batch, continuing)


@pytest.fixture(scope="module", params=["absolute", "rotary"])
def setup(request):
    model = tiny_model(n_layers=2) if request.param == "absolute" else rotary_model(n_layers=2)
    return (model, *_setup(model))


def _ld(model, batch, side, continuing):
    from test_causal import whole_ld

    return whole_ld(model, batch, side, continuing=continuing)


def test_the_whole_graph_is_the_corrupt_run_and_the_empty_circuit_the_clean_run(setup):
    model, batch, classes, continuing, clean = setup
    graph = circuit.graph_of(model)
    every = graph.valid[..., None].expand(-1, -1, len(circuit.CLASSES)).clone()
    none = torch.zeros_like(every)
    corrupt, clean_ld = _ld(model, batch, "corrupt", continuing), _ld(model, batch, "clean", continuing)
    assert (corrupt - clean_ld).abs().max() > 1e-3
    for edges, complement, expected in ((every, False, corrupt), (none, False, clean_ld), (every, True, clean_ld),
                                        (none, True, corrupt)):
        got = circuit.circuit_ld(model, batch, edges, classes, clean, continuing, complement=complement)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(clean.ld, clean_ld, atol=1e-4, rtol=0)  # the clean run's own LD, read once


def test_one_edge_ablated_alone_changes_ld_as_path_patching_says(setup):
    """The edge carries its sender's clean output at the receiver's input, at the positions
    of its class only, and nowhere else: a hook adding the sender's clean-minus-corrupt
    output to the receiver's input there is the same intervention, written separately."""
    model, batch, classes, continuing, clean = setup
    graph = circuit.graph_of(model)
    with circuit.edge_level(model):
        corrupt_out = circuit.sender_outputs(model, graph, batch.full("corrupt"))
    for sender, receiver, cls in (("L0H1", "L1H2.v", "changed"), ("MLP0", "logits", "final"),
                                  ("input", "L1H0.k", "changed"), ("L1H3", "logits", "final")):
        u, v, c = graph.sender_index(sender), graph.receiver_index(receiver), circuit.CLASSES.index(cls)
        edges = torch.zeros(len(graph.senders), len(graph.receivers), len(circuit.CLASSES), dtype=torch.bool)
        edges[u, v, c] = True
        fast = circuit.circuit_ld(model, batch, edges, classes, clean, continuing, complement=True)
        delta = (clean.senders[u] - corrupt_out[u]) * (classes == c)[..., None]
        layer, head = (int(receiver[1:].split("H")[0]), int(receiver.split("H")[1][0])) if "." in receiver else (None, None)

        def add(act, hook, delta=delta, head=head):
            act = act.clone()
            if head is None:
                return act + delta
            act[:, :, head] += delta
            return act

        name = (f"blocks.{layer}.hook_{receiver[-1]}_input" if head is not None
                else f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
        with circuit.edge_level(model), model.hooks(fwd_hooks=[(name, add)]):
            slow = _ld(model, batch, "corrupt", continuing)
        torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)
        assert (fast - _ld(model, batch, "corrupt", continuing)).abs().max() > 1e-6 or cls == "final"


def test_eap_ig_is_exact_for_edges_into_the_logits_where_ld_is_linear_there():
    """No final norm, one-token answers and no token continuing them: LD is linear in the
    logits' input, so every edge into the logits scores exactly its edge-patching effect."""
    model = tiny_model(n_layers=2, normalization=None, seed=4)
    batch, classes, continuing, clean = _setup(model, single_token=True)
    graph = circuit.graph_of(model)
    scores = circuit.eap_ig_scores(model, batch, classes, continuing, steps=2)
    base = _ld(model, batch, "corrupt", continuing)
    v = graph.receiver_index("logits")
    checked = 0
    for sender in ("input", "L0H0", "MLP0", "L1H3", "MLP1"):
        u = graph.sender_index(sender)
        for c, cls in enumerate(circuit.CLASSES):
            edges = torch.zeros(len(graph.senders), len(graph.receivers), len(circuit.CLASSES), dtype=torch.bool)
            edges[u, v, c] = True
            exact = (circuit.circuit_ld(model, batch, edges, classes, clean, continuing, complement=True) - base).sum()
            assert scores[u, v, c].item() == pytest.approx(exact.item(), abs=1e-4)
            checked += abs(exact.item()) > 1e-3
    assert checked >= 3


def test_eap_ig_scores_converge_as_the_steps_grow():
    model = tiny_model(n_layers=2, seed=2)
    batch, classes, continuing, _ = _setup(model)
    scores = {steps: circuit.eap_ig_scores(model, batch, classes, continuing, steps) for steps in (2, 16, 64)}
    scale = scores[64].abs().max()
    far, near = (scores[2] - scores[64]).abs().max() / scale, (scores[16] - scores[64]).abs().max() / scale
    assert near < 0.02 and near < far / 5


def test_the_top_edges_and_the_nodes_they_touch():
    model = tiny_model(n_layers=2)
    graph = circuit.graph_of(model)
    scores = torch.zeros(len(graph.senders), len(graph.receivers), len(circuit.CLASSES))
    scores[graph.sender_index("L0H1"), graph.receiver_index("L1H2.q"), 0] = -3.0
    scores[graph.sender_index("MLP1"), graph.receiver_index("logits"), 2] = 2.0
    scores[graph.sender_index("input"), graph.receiver_index("MLP0"), 4] = 0.5
    edges = circuit.top_edges(scores, 2)
    assert edges.sum() == 2 and circuit.circuit_nodes(graph, edges) == ["L0H1", "L1H2", "MLP1"]
    assert circuit.node_edges(graph, edges, "L1H2").sum() == 1
    assert circuit.top_edges(scores, 10).sum() == 3  # only edges that scored
    assert not graph.valid[graph.sender_index("MLP1"), graph.receiver_index("L1H0.q")]  # no edge backwards
