"""Figures of the heads stage (Figures 2 and 5), drawn from heads.json and its tensors
alone: the paper calls them; nothing here loads a model."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from analysis.figurecheck import bind
from analysis.heads import HeadsMetrics
from analysis.plotting import COLORS, ablation_bars, styled


def _heatmap(ax, values, title: str, cmap: str, symmetric: bool = False, fig=None):
    values = torch.as_tensor(values).numpy()
    limit = float(abs(values).max()) if symmetric else None
    image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest",
                      vmin=-limit if symmetric else 0, vmax=limit if symmetric else None)
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.grid(False)
    fig.colorbar(image, ax=ax, shrink=0.8)


@styled
def plot_head_scores(metrics: HeadsMetrics):
    """Layer x head maps: induction, previous-token, context-answer attention, DLA."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.6), layout="constrained")
    axes = fig.subplots(2, 2).flatten()
    _heatmap(axes[0], metrics.induction_score, "induction score", "Greens", fig=fig)
    _heatmap(axes[1], metrics.prev_token_score, "previous-token score", "Purples", fig=fig)
    _heatmap(axes[2], metrics.context_answer_attention_family.mean,
             f"attention to the previous answer\n(family mean, n = {metrics.context_answer_attention_family.n_prompts})",
             "Reds", fig=fig)
    _heatmap(axes[3], metrics.dla, "DLA: logit(misconception) - logit(correct)\n(canonical prompt)",
             "RdBu_r", symmetric=True, fig=fig)
    for head in metrics.top_heads:  # every head the heads table lists
        axes[2].scatter([head.head], [head.layer], s=60, facecolors="none", edgecolors="black", linewidths=1)
    return bind(fig, ns=(metrics.context_answer_attention_family.n_prompts,))  # means only: no interval drawn


def token_label(token: str) -> str:
    """A token as a tick label: a token of spaces only is left unlabelled (SmolLM2 gives every
    space its own token, and labelling them crowds the axis); other spaces as "_" (plain, so
    that every font draws it); "∅" if empty."""
    if token and not token.strip():
        return ""
    return token.replace(" ", "_") or "∅"


def sink_free_max(pattern: Float[Tensor, "query key"]) -> float:
    """The largest attention to any key but the first. Most heads park spare attention on the
    first token (an attention sink); a colour scale up to that would flatten the rest."""
    rest = pattern[1:, 1:] if pattern.shape[1] > 1 else pattern
    return max(float(rest.max()), 1e-3)


def _pattern_axes(ax, pattern: Tensor, tokens: list[str], title: str, fig, show_keys: bool = True):
    image = ax.imshow(pattern.numpy(), cmap="Reds", vmin=0, vmax=sink_free_max(pattern), interpolation="nearest")
    labels = [token_label(t) for t in tokens]
    ax.set_yticks(range(len(tokens)), labels, fontsize=7)
    ax.set_xticks(range(len(tokens)), labels if show_keys else [], fontsize=7, rotation=90)
    ax.set_title(title, fontsize=8)
    ax.grid(False)
    return image


def _head_title(metrics: HeadsMetrics, layer: int, head: int) -> str:
    roles = []
    if metrics.configured_head and (metrics.configured_head.layer, metrics.configured_head.head) == (layer, head):
        roles.append("the study's head")
    if (metrics.top_induction_head.layer, metrics.top_induction_head.head) == (layer, head):
        roles.append("top induction")
    if (metrics.top_heads[0].layer, metrics.top_heads[0].head) == (layer, head):
        roles.append("top context-answer")
    return f"L{layer}H{head} ({', '.join(roles)})"


@styled
def plot_attention_patterns(metrics: HeadsMetrics, tensors: dict[str, Tensor]):
    """Figure 2: attention patterns (query x key) on the canonical prompt, token labels."""
    from matplotlib.figure import Figure

    heads = metrics.figure_heads
    n_cols = min(len(heads), 2)
    n_rows = -(-len(heads) // n_cols)
    fig = Figure(figsize=(6.8, 3.5 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).flatten()
    for ax, (layer, head) in zip(axes, heads, strict=False):
        image = _pattern_axes(ax, tensors["pattern_canonical"][layer, head], metrics.prompt_tokens,
                              _head_title(metrics, layer, head), fig)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        fig.colorbar(image, ax=ax, shrink=0.8, label="attention (first key clipped)")
    for ax in axes[len(heads):]:
        ax.set_visible(False)
    return bind(fig)  # one prompt: no interval


@styled
def plot_control_comparison(metrics: HeadsMetrics, tensors: dict[str, Tensor]):
    """Figure 5 (attention half): final-position attention, canonical prompt against control."""
    from matplotlib.figure import Figure

    heads = metrics.figure_heads
    fig = Figure(figsize=(6.8, 1.9 * len(heads)), layout="constrained")
    axes = fig.subplots(len(heads), 2, squeeze=False, gridspec_kw={"width_ratios": [3, 1]})
    for row, (layer, head) in enumerate(heads):
        for col, (name, tokens) in enumerate((("canonical", metrics.prompt_tokens),
                                              ("control", metrics.control_tokens))):
            ax = axes[row, col]
            final = tensors[f"pattern_{name}"][layer, head, len(tokens) - 1, : len(tokens)]
            ax.bar(range(len(tokens)), final.numpy(), color=COLORS["misconception" if col == 0 else "control"])
            ax.set_xticks(range(len(tokens)), [token_label(t) for t in tokens], fontsize=7, rotation=90)
            ax.set_ylim(0, 1)
            ax.set_title(f"{_head_title(metrics, layer, head)}: canonical prompt" if col == 0 else "control prompt",
                         fontsize=8)
        axes[row, 0].set_ylabel("attention from\nfinal position")
    return bind(fig)  # two prompts: no interval


@styled
def plot_head_ablation(metrics: HeadsMetrics):
    """Figure 4 (heads): ablating one head, change in first-token probabilities on the family."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 2.6), layout="constrained")
    ax = fig.subplots()
    drawn = ablation_bars(ax, [f"L{a.layer}H{a.head}" for a in metrics.ablations],
                          [a.family for a in metrics.ablations])
    ax.set_title(f"{metrics.ablation}-ablating one head, prompt family")
    return bind(fig, drawn)
