"""The figures of the sae stage (the study's Figures 3, 5, 7 and 9, measured), drawn from
data/<model>/sae.json alone. Not a stage: the paper imports it."""

from __future__ import annotations

from analysis.figurecheck import bind
from analysis.plotting import COLORS, ablation_bars, styled
from analysis.report import quote_token
from analysis.sae import SaeMetrics, feature_order


def _panels(metrics: SaeMetrics, height: float):
    """A figure with one row of axes per SAE: (figure, axes, SAE names)."""
    from matplotlib.figure import Figure

    names = list(metrics.saes)
    fig = Figure(figsize=(6.8, height * len(names)), layout="constrained")
    return fig, fig.subplots(len(names), 1, squeeze=False)[:, 0], names


def _label(feature: int) -> str:
    return f"#{feature}"


@styled
def plot_top_features(metrics: SaeMetrics):
    """Figure 3: the top features by activation and by attribution, canonical prompt."""
    from matplotlib.figure import Figure

    names = list(metrics.saes)
    fig = Figure(figsize=(6.8, 2.4 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in enumerate(names):
        result = metrics.saes[name]
        acts = [result.features[str(f)] for f in result.top_by_activation]
        axes[row, 0].bar([_label(f.id) for f in acts], [f.activation for f in acts], color=COLORS["accent"])
        axes[row, 0].set_title(f"{name}: top features by activation")
        axes[row, 0].set_ylabel("activation")
        attrs = [result.features[str(f)] for f in result.top_by_attribution]
        axes[row, 1].bar([_label(f.id) for f in attrs], [f.attribution for f in attrs],
                         color=[COLORS["misconception"] if f.attribution > 0 else COLORS["correct"] for f in attrs])
        axes[row, 1].axhline(0, color="black", linewidth=0.6)
        axes[row, 1].set_title(f"{name}: top features by |attribution|")
        axes[row, 1].set_ylabel(f"attribution to {metrics.attribution_metric}")
    return bind(fig)  # one or two prompts: no interval


@styled
def plot_control_features(metrics: SaeMetrics):
    """Figure 5 (SAE half): the top attribution features, canonical prompt against control."""
    fig, axes, names = _panels(metrics, height=2.3)
    width = 0.38
    for ax, name in zip(axes, names, strict=True):
        result = metrics.saes[name]
        ids = feature_order(result.top_by_attribution, result.reported)
        feats = [result.features[str(f)] for f in ids]
        x = range(len(feats))
        ax.bar([i - width / 2 for i in x], [f.activation for f in feats], width, color=COLORS["misconception"],
               label="canonical prompt")
        ax.bar([i + width / 2 for i in x], [f.control_activation for f in feats], width, color=COLORS["control"],
               label="control prompt")
        ax.set_xticks(list(x), [_label(f.id) for f in feats])
        ax.set_ylabel("activation")
        ax.set_title(f"{name}: top attribution features{' and reported ones' if result.reported else ''}")
    axes[0].legend(frameon=False)
    return bind(fig)  # one or two prompts: no interval


@styled
def plot_logit_contributions(metrics: SaeMetrics):
    """Figure 9: direct logit contribution of the top attribution feature of each SAE."""
    fig, axes, names = _panels(metrics, height=3.0)
    for ax, name in zip(axes, names, strict=True):
        result = metrics.saes[name]
        feature = result.features[str(result.top_by_attribution[0])]
        rows = [(f"correct {quote_token(metrics.answers['correct'])}", feature.logit_contribution["correct"], COLORS["correct"]),
                (f"misconception {quote_token(metrics.answers['misconception'])}",
                 feature.logit_contribution["misconception"], COLORS["misconception"])]
        rows += [(quote_token(t.token), feature.activation * t.effect, COLORS["control"]) for t in feature.top_promoted[:4]]
        rows += [(quote_token(t.token), feature.activation * t.effect, COLORS["control"]) for t in feature.top_suppressed[:4]]
        labels, values, colors = zip(*rows, strict=True)
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel("direct logit contribution (activation × decoder direction → unembedding)")
        ax.set_title(f"{name}: feature {_label(feature.id)} (activation {feature.activation:.2f})")
    return bind(fig)  # one or two prompts: no interval


@styled
def plot_ablation(metrics: SaeMetrics):
    """Zeroing (or mean-ablating) each feature: change in first-token probabilities on the family."""
    fig, axes, names = _panels(metrics, height=2.4)
    drawn = []
    for ax, name in zip(axes, names, strict=True):
        result = metrics.saes[name]
        ids = feature_order(result.top_by_activation, result.top_by_attribution, result.reported)
        feats = [result.features[str(f)] for f in ids]
        drawn += ablation_bars(ax, [_label(f.id) for f in feats], [f.ablation_family for f in feats])
        ax.set_title(f"{name}: ablating one feature, prompt family")
    return bind(fig, drawn)


@styled
def plot_spacing(metrics: SaeMetrics, head_attention: dict[str, list[float]], heads: list[list[int]]):
    """Figure 7: attention (top) and feature activations (bottom) across spacing variants.
    head_attention[variant][i] is the attention of heads[i] ([layer, head]) to the previous answer."""
    from matplotlib.figure import Figure

    variants = list(head_attention)
    names = list(metrics.saes)
    fig = Figure(figsize=(6.8, 2.2 * (1 + len(names))), layout="constrained")
    axes = fig.subplots(1 + len(names), 1, squeeze=False)[:, 0]
    width = 0.8 / len(variants)
    heads = [f"L{l}H{h}" for l, h in heads]
    for j, variant in enumerate(variants):
        axes[0].bar([i + (j - (len(variants) - 1) / 2) * width for i in range(len(heads))],
                    head_attention[variant], width, label=variant)
    axes[0].set_xticks(range(len(heads)), heads)
    axes[0].set_ylabel("attention to the\nprevious answer")
    axes[0].set_title("attention from the final position")
    axes[0].legend(frameon=False)
    for ax, name in zip(axes[1:], names, strict=True):
        result = metrics.saes[name]
        ids = feature_order(result.top_by_attribution, result.reported)
        for j, variant in enumerate(variants):
            acts = [result.spacing[variant].activations[str(f)] for f in ids]
            ax.bar([i + (j - (len(variants) - 1) / 2) * width for i in range(len(ids))], acts, width, label=variant)
        ax.set_xticks(range(len(ids)), [_label(f) for f in ids])
        ax.set_ylabel("activation")
        ax.set_title(f"{name}: top attribution features")
    return bind(fig)  # one or two prompts: no interval
