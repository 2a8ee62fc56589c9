"""The figures of the logit_lens stage (the study's Figure 1, measured, and the family lens),
drawn from data/<model>/logit_lens.json alone. Not a stage: the paper imports it."""

from __future__ import annotations

from analysis.figurecheck import bind
from analysis.logit_lens import LogitLensMetrics
from analysis.plotting import COLORS, styled
from analysis.report import quote_token

@styled
def plot_logit_lens(metrics: LogitLensMetrics):
    """Figure 1: lens probability of each answer's first token by layer (linear, log)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 2.8), layout="constrained")
    axes = fig.subplots(1, 2)
    layers = range(metrics.n_layers)
    for name, marker in (("misconception", "o"), ("correct", "^")):
        cand = getattr(metrics, name)
        label = f"{name} {quote_token(cand.text.strip())} (token {quote_token(cand.first_token)})"
        for ax in axes:
            ax.plot(layers, cand.prob_by_layer, marker=marker, markersize=3, linewidth=1.5,
                    color=COLORS[name], label=label)
    axes[0].set_ylabel("probability at the final position")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("probability (log scale)")
    for ax in axes:
        ax.set_xlabel("layer (resid_post)")
    axes[0].legend(loc="upper left", frameon=False)
    fig.suptitle(f"Logit lens, {metrics.model_label}", fontsize=10)
    return bind(fig)  # one prompt: no interval


@styled
def plot_family_lens(metrics: LogitLensMetrics):
    """The logit lens over the prompt family: mean and 95% interval per layer."""
    from matplotlib.figure import Figure

    family = metrics.family
    fig = Figure(figsize=(6.5, 2.6), layout="constrained")
    ax = fig.subplots()
    layers = range(metrics.n_layers)
    for name, n, color, label in (
            ("correct", family.n_prompts, COLORS["correct"], "correct answer"),
            ("previous_answer", family.n_copy_prompts, COLORS["misconception"], "copy of the previous answer")):
        band = getattr(family, name)
        ax.plot(layers, band.mean, color=color, linewidth=1.5, label=f"{label} (first token), n = {n}")
        ax.fill_between(layers, band.low, band.high, color=color, alpha=0.25, linewidth=0)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("lens probability")
    ax.set_title(f"Logit lens over the prompt family: mean and {family.ci_level:.0%} interval")
    ax.legend(frameon=False, loc="upper left")
    return bind(fig, ns=(family.n_prompts, family.n_copy_prompts), methods=("percentile bootstrap",))
