"""Circuits from edge attribution: EAP-IG scores over the graph of heads and MLPs, edges
ablated one class of positions at a time, and a circuit's faithfulness, the share kept
without it, and minimality (Hanna et al. 2024, "Have faith in faithfulness").

The graph: senders are the input (the residual stream entering block 0), every head's
output (from hook_z) and every MLP's output; receivers are every head's query, key and
value inputs (split per head; grouped keys and values ungrouped, which changes no output),
every MLP's input and the logits (the residual stream after the last block). An edge
sender -> receiver exists where the sender writes before the receiver reads, and it is
scored separately for each class of positions where the receiver reads it: the tokens
where the corrupt and clean contexts differ, the query's "=", the final context position,
the answer's own tokens, and the other positions.

A circuit is a set of such edges. It is run on the corrupt input with every edge outside
it carrying the clean run's value of its sender: each receiver reads the clean residual
stream plus, for each circuit edge, its sender's current output minus its clean output.
The whole graph is the corrupt run, the empty circuit the clean run. Faithfulness is
(LD(circuit) - LD(clean)) / (LD(corrupt) - LD(clean)): the share of the error's logit
difference the circuit keeps; the share kept without it is the same ratio with the
circuit's edges ablated and every other edge intact (the faithfulness of the complement,
how completeness is measured by Marks et al. 2024: near 0 when the circuit is complete); a node's minimality is how much
faithfulness drops without that node's edges.

EAP-IG scores an edge by its sender's clean-minus-corrupt output times the gradient of LD
with respect to the receiver's input, averaged over `steps` points of the straight path
from the corrupt to the clean input embeddings (midpoints).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis.causal import PairBatch, whole_outcome
from analysis.timing import progress

CLASSES = ("changed", "equals", "final", "answer", "other")
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    n_layers: int
    n_heads: int
    senders: tuple[str, ...]  # "input", "L{l}H{h}", "MLP{l}"
    receivers: tuple[str, ...]  # "L{l}H{h}.q|k|v", "MLP{l}", "logits"
    sender_layer: tuple[float, ...]  # where each writes: -1 the input, l a head, l + 0.5 an MLP
    receiver_layer: tuple[float, ...]  # where each reads: l a head, l + 0.5 an MLP, n_layers the logits

    @property
    def valid(self) -> Bool[Tensor, "sender receiver"]:
        return torch.tensor(self.sender_layer)[:, None] < torch.tensor(self.receiver_layer)[None]

    def sender_index(self, name: str) -> int:
        return self.senders.index(name)

    def receiver_index(self, name: str) -> int:
        return self.receivers.index(name)


def graph_of(model) -> Graph:
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    mlp = not model.cfg.attn_only
    senders, s_layer, receivers, r_layer = ["input"], [-1.0], [], []
    for l in range(layers):
        senders += [f"L{l}H{h}" for h in range(heads)] + ([f"MLP{l}"] if mlp else [])
        s_layer += [float(l)] * heads + ([l + 0.5] if mlp else [])
        receivers += [f"L{l}H{h}.{x}" for h in range(heads) for x in QKV] + ([f"MLP{l}"] if mlp else [])
        r_layer += [float(l)] * 3 * heads + ([l + 0.5] if mlp else [])
    return Graph(layers, heads, tuple(senders), tuple([*receivers, "logits"]), tuple(s_layer),
                 tuple([*r_layer, float(layers)]))


@contextmanager
def edge_level(model) -> Iterator[None]:
    """The model with per-head inputs exposed (hook_q/k/v_input, hook_mlp_in); restored
    afterwards. Per-head outputs are computed from hook_z (head_outputs): TransformerLens'
    hook_result materialises a (batch, pos, head, d_head, d_model) product, 50x slower here."""
    cfg = model.cfg
    saved = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in, cfg.ungroup_grouped_query_attention)
    model.set_use_split_qkv_input(True)
    if not cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    model.set_ungroup_grouped_query_attention(True)
    try:
        yield
    finally:
        cfg.use_split_qkv_input, cfg.use_hook_mlp_in, cfg.ungroup_grouped_query_attention = saved


def position_classes(batch: PairBatch, equals_id: int) -> Int[Tensor, "rows full"]:
    """The class (index into CLASSES) of every position of the full sequences (context then
    answer, W's rows then C's)."""
    n, pos = batch.corrupt.shape
    alen = batch.answers.shape[2]
    classes = torch.full((n, pos + alen), CLASSES.index("other"))
    is_equals = batch.corrupt == equals_id
    last_equals = pos - 1 - is_equals.flip(1).int().argmax(1)  # the query's "="
    classes[torch.arange(n), last_equals] = CLASSES.index("equals")
    classes[:, :pos][batch.changed] = CLASSES.index("changed")
    classes[:, pos - 1] = CLASSES.index("final")
    classes[:, pos:] = CLASSES.index("answer")
    return classes.repeat(2, 1)


def _sender_hooks(graph: Graph) -> list[tuple[str, int | None]]:
    """(hook name, MLP layer or None for heads) of every sender hook but the input's."""
    hooks = []
    for l in range(graph.n_layers):
        hooks.append((f"blocks.{l}.attn.hook_z", None))
        if f"MLP{l}" in graph.senders:
            hooks.append((f"blocks.{l}.hook_mlp_out", l))
    return hooks


def _sender_rows(graph: Graph, name: str) -> list[int]:
    """The sender indices a sender hook fills: a layer's heads, or its MLP."""
    layer = int(name.split(".")[1])
    if name.endswith("hook_z"):
        return [graph.sender_index(f"L{layer}H{h}") for h in range(graph.n_heads)]
    return [graph.sender_index(f"MLP{layer}")]


def head_outputs(model, name: str, z: Float[Tensor, "rows full head d_head"]) -> Float[Tensor, "head rows full d_model"]:
    """Each head's output (its z through its slice of W_O, without the shared bias b_O, which
    cancels in every clean-minus-corrupt difference); `name` is the layer's hook_z."""
    return torch.einsum("rphd,hdm->hrpm", z, model.blocks[int(name.split(".")[1])].attn.W_O)


def _senders_of(model, name: str, act: Tensor) -> Tensor:
    """A sender hook's activation as (senders, rows, full, d_model)."""
    return head_outputs(model, name, act) if name.endswith("hook_z") else act[None]


@torch.no_grad()
def sender_outputs(model, graph: Graph, tokens: Int[Tensor, "rows full"]) -> Float[Tensor, "sender rows full d_model"]:
    """Every sender's output on `tokens` (run with edge_level on)."""
    names = {"blocks.0.hook_resid_pre"} | {name for name, _ in _sender_hooks(graph)}
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    out = torch.empty(len(graph.senders), *tokens.shape, model.cfg.d_model, device=model.cfg.device)
    out[0] = cache["blocks.0.hook_resid_pre"]
    for name, _ in _sender_hooks(graph):
        out[_sender_rows(graph, name)] = _senders_of(model, name, cache[name])
    return out


def _receiver_hooks(graph: Graph) -> list[tuple[str, list[int]]]:
    """(hook name, receiver indices it carries, in the hook's head order) of every receiver."""
    hooks = []
    for l in range(graph.n_layers):
        for x in QKV:
            hooks.append((f"blocks.{l}.hook_{x}_input", [graph.receiver_index(f"L{l}H{h}.{x}") for h in range(graph.n_heads)]))
        if f"MLP{l}" in graph.receivers:
            hooks.append((f"blocks.{l}.hook_mlp_in", [graph.receiver_index(f"MLP{l}")]))
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", [graph.receiver_index("logits")]))
    return hooks


# --- EAP-IG -----------------------------------------------------------------------------------

def eap_ig_scores(model, batch: PairBatch, classes: Int[Tensor, "rows full"], continuing: Tensor, steps: int
                  ) -> Float[Tensor, "sender receiver class"]:
    """EAP-IG scores of every edge and position class, summed over the batch's pairs: a
    score is the first-order change in LD when the edge carries its sender's clean output
    instead of its corrupt one (negative: the corrupt value pushes towards the error)."""
    graph = graph_of(model)
    with edge_level(model):
        corrupt, clean = (batch.full(s).to(model.cfg.device) for s in ("corrupt", "clean"))
        corrupt_out = sender_outputs(model, graph, corrupt)
        delta = sender_outputs(model, graph, clean) - corrupt_out
        start = corrupt_out[0]  # the corrupt input's embeddings; the path ends at the clean ones
        grads = _mean_gradients(model, graph, batch, corrupt, start, start + delta[0], continuing, steps)
        del corrupt_out
    hooks = _receiver_hooks(graph)
    receivers = [index for _, indices in hooks for index in indices]
    # every receiver's gradient side by side: (rows * full, d_model, receivers)
    g = torch.cat([grads[name] if grads[name].dim() == 4 else grads[name][:, :, None] for name, _ in hooks], dim=2)
    g = g.flatten(0, 1).transpose(1, 2)
    d = delta.flatten(1, 2)  # (sender, rows * full, d_model)
    flat = classes.flatten().to(delta.device)
    scores = torch.zeros(len(graph.senders), len(graph.receivers), len(CLASSES))
    for c in range(len(CLASSES)):
        at = (flat == c).nonzero()[:, 0]
        if len(at):  # one matmul per class: sum over its positions and d_model
            scores[:, receivers, c] = (d[:, at].flatten(1) @ g[at].flatten(0, 1)).cpu()
    return scores * graph.valid[..., None]


def _mean_gradients(model, graph: Graph, batch: PairBatch, tokens: Tensor, start: Tensor, stop: Tensor,
                    continuing: Tensor, steps: int) -> dict[str, Tensor]:
    """d LD / d (each receiver's input), averaged over the path start -> stop of the input."""
    names = [name for name, _ in _receiver_hooks(graph)]
    total: dict[str, Tensor] = {}
    for k in progress(range(steps), "EAP-IG steps", unit="step"):
        alpha = (k + 0.5) / steps
        kept: dict[str, Tensor] = {}

        def interpolate(x: Tensor, hook, alpha=alpha) -> Tensor:
            return (start + alpha * (stop - start)).detach().requires_grad_(True)

        def keep(x: Tensor, hook) -> Tensor:
            x.retain_grad()
            kept[hook.name] = x
            return x

        hooks = [("blocks.0.hook_resid_pre", interpolate), *((name, keep) for name in names)]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            resid = model(tokens, stop_at_layer=model.cfg.n_layers)
            whole_outcome(model, resid, batch, continuing).ld.sum().backward()
        for name in names:
            grad = kept[name].grad.detach()
            total[name] = grad if name not in total else total[name] + grad
    return {name: g / steps for name, g in total.items()}


# --- running a circuit -----------------------------------------------------------------------

@dataclass(frozen=True)
class CleanRun:
    """What an ablated edge carries: the clean run's sender outputs and receiver inputs."""

    senders: Float[Tensor, "sender rows full d_model"]
    receivers: dict[str, Tensor]  # hook name -> the clean residual stream that hook's receivers read
    ld: Float[Tensor, "batch"]  # the clean run's LD (the empty circuit's)


@torch.no_grad()
def clean_run(model, batch: PairBatch, continuing: Tensor) -> CleanRun:
    graph = graph_of(model)
    with edge_level(model):
        tokens = batch.full("clean").to(model.cfg.device)
        names = {name for name, _ in _receiver_hooks(graph)}
        resid, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=model.cfg.n_layers)
        receivers = {name: cache[name] for name in names}
        ld = whole_outcome(model, resid, batch, continuing).ld[0]
        return CleanRun(sender_outputs(model, graph, tokens), receivers, ld)


@torch.no_grad()
def circuit_ld(model, batch: PairBatch, edges: Bool[Tensor, "sender receiver class"], classes: Int[Tensor, "rows full"],
               clean: CleanRun, continuing: Tensor, complement: bool = False) -> Float[Tensor, "batch"]:
    """LD of the corrupt input with only `edges` carrying the current run (every other edge
    its sender's clean output); with `complement`, only `edges` carry the clean output."""
    graph = graph_of(model)
    device = model.cfg.device
    edges = edges.to(device) & graph.valid.to(device)[..., None]
    onehot = torch.nn.functional.one_hot(classes, len(CLASSES)).float().to(device)
    live = edges.flatten(1).any(1)  # senders some edge of the circuit carries
    current: dict[int, Tensor] = {}  # sender -> its output now minus its clean output

    def send(rows: list[int]):
        def hook(act: Tensor, hook) -> None:
            values = _senders_of(model, hook.name, act) if hook.name != "blocks.0.hook_resid_pre" else act[None]
            for k, u in enumerate(rows):
                if live[u]:
                    current[u] = values[k] - clean.senders[u]
        return hook

    def receive(indices: list[int]):
        feeders = edges[:, indices].flatten(1).any(1).nonzero()[:, 0].tolist()  # senders with an edge here

        def hook(act: Tensor, hook) -> Tensor:
            correction = torch.zeros(*act.shape[:2], len(indices), act.shape[-1], device=device)
            if feeders:
                cur = torch.stack([current[u] for u in feeders])  # (feeder, rows, full, d_model)
                mask = edges[feeders][:, indices].float()  # (feeder, receiver, class)
                for c in mask.any(0).any(0).nonzero()[:, 0].tolist():  # one product per class present
                    summed = torch.einsum("fh,frpd->rphd", mask[:, :, c], cur)
                    correction += summed * onehot[:, :, c, None, None]
            correction = correction if act.dim() == 4 else correction[:, :, 0]
            return act - correction if complement else clean.receivers[hook.name] + correction
        return hook

    hooks = [("blocks.0.hook_resid_pre", send([0]))]
    for name, _ in _sender_hooks(graph):
        hooks.append((name, send(_sender_rows(graph, name))))
    hooks += [(name, receive(indices)) for name, indices in _receiver_hooks(graph)]
    with edge_level(model), model.hooks(fwd_hooks=hooks):
        resid = model(batch.full("corrupt").to(device), stop_at_layer=model.cfg.n_layers)
    return whole_outcome(model, resid, batch, continuing).ld[0]


@torch.no_grad()
def plain_ld(model, batch: PairBatch, side: str, continuing: Tensor) -> Float[Tensor, "batch"]:
    """LD of one side's plain run: the whole graph is the corrupt run, the empty one the clean."""
    resid = model(batch.full(side).to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
    return whole_outcome(model, resid, batch, continuing).ld[0]


def top_edges(scores: Float[Tensor, "sender receiver class"], k: int) -> Bool[Tensor, "sender receiver class"]:
    """The k edges (with their position class) of the largest |score|."""
    flat = scores.abs().flatten()
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[flat.argsort(descending=True)[:k]] = True
    return chosen.reshape(scores.shape) & (scores != 0)


def node_edges(graph: Graph, edges: Bool[Tensor, "sender receiver class"], node: str) -> Bool[Tensor, "sender receiver class"]:
    """`edges` without those that touch `node` (a head or MLP, as sender or as receiver)."""
    out = edges.clone()
    if node in graph.senders:
        out[graph.sender_index(node)] = False
    for i, name in enumerate(graph.receivers):
        if name.split(".")[0] == node:
            out[:, i] = False
    return out


def circuit_nodes(graph: Graph, edges: Bool[Tensor, "sender receiver class"]) -> list[str]:
    """The heads and MLPs an edge set touches (input and logits aside), in forward order."""
    names = {graph.senders[u] for u in edges.flatten(1).any(1).nonzero()[:, 0].tolist()}
    names |= {graph.receivers[v].split(".")[0] for v in edges.transpose(0, 1).flatten(1).any(1).nonzero()[:, 0].tolist()}
    order = {name: i for i, name in enumerate(graph.senders)}
    return sorted((n for n in names if n in order and n != "input"), key=order.__getitem__)
