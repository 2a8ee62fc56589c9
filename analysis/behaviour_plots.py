"""The figures of the behaviour stage (the study's Figures 6 and 8, measured), drawn from
data/<model>/behaviour.json and behaviour.safetensors alone. Not a stage: the paper imports it."""

from __future__ import annotations

from torch import Tensor

from analysis.behaviour import CONDITIONS, BehaviourMetrics
from analysis.figurecheck import bind
from analysis.plotting import COLORS, styled

LABELS = {"zero_shot": "zero-shot", "few_shot": "few-shot (random)", "study_context": "study's examples"}


def _ordered(metrics: BehaviourMetrics) -> list[str]:
    return [name for name in CONDITIONS if name in metrics.conditions]


@styled
def plot_summary(metrics: BehaviourMetrics):
    """Figure 6: accuracy and error probability by condition, carry against no carry."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 3.0), layout="constrained")
    axes = fig.subplots(1, 2)
    names = _ordered(metrics)
    width = 0.38
    drawn = []
    for ax, field, title in ((axes[0], "accuracy", "accuracy (greedy answer right)"),
                             (axes[1], "error_prob", "error probability, 1 − P(right number)")):
        for offset, split, color in ((-width / 2, "no_carry", COLORS["correct"]), (width / 2, "carry", COLORS["misconception"])):
            estimates = [getattr(metrics.conditions[n], field)[split] for n in names]
            drawn += estimates
            means = [e.mean for e in estimates]
            errors = [[0 if e.low is None else e.mean - e.low for e in estimates],
                      [0 if e.high is None else e.high - e.mean for e in estimates]]
            ax.bar([i + offset for i in range(len(names))], means, width, yerr=errors, capsize=3, color=color,
                   label="carry (a + b ≥ 10)" if split == "carry" else "no carry")
        ticks = [f"{LABELS.get(n, n).replace(' (', chr(10) + '(').replace('s ex', 's' + chr(10) + 'ex')}\n"
                 f"n = {c.accuracy['no_carry'].n}, {c.accuracy['carry'].n}"
                 for n, c in ((n, metrics.conditions[n]) for n in names)]
        ax.set_xticks(range(len(names)), ticks, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of queries" if field == "accuracy" else "mean over queries")
        ax.set_title(title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    return bind(fig, drawn)


@styled
def plot_grids(metrics: BehaviourMetrics, tensors: dict[str, Tensor]):
    """Accuracy of every a + b, one 10 x 10 grid per condition (mean over contexts)."""
    from matplotlib.figure import Figure

    names = _ordered(metrics)
    fig = Figure(figsize=(2.3 * len(names) + 0.8, 2.6), layout="constrained")
    axes = fig.subplots(1, len(names))
    for ax, name in zip(axes, names, strict=True):
        grid = tensors[f"{name}/accuracy_grid"].numpy()
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, origin="lower", interpolation="nearest")
        ax.set_title(LABELS.get(name, name))
        ax.set_xlabel("b")
        ax.set_ylabel("a")
        ax.grid(False)
        ticks = range(0, metrics.max_operand + 1, 3)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="accuracy")
    return bind(fig)  # every query of the grid: no interval


@styled
def plot_frequency(metrics: BehaviourMetrics):
    """Figure 8: the model's prior over numbers against the canonical query's answers."""
    from matplotlib.figure import Figure

    freq = metrics.frequency
    fig = Figure(figsize=(6.8, 2.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    x = freq.numbers
    colors = [COLORS["misconception"] if n == freq.misconception else COLORS["correct"] if n == freq.correct
              else COLORS["control"] for n in x]
    axes[0].bar(x, freq.prior, color=colors)
    axes[0].set_title(f"(A) prior: after {len(freq.neutral_contexts)} neutral contexts")
    width = 0.4
    axes[1].bar([n - width / 2 for n in x], freq.zero_shot, width, color=COLORS["control"], label="zero-shot")
    axes[1].bar([n + width / 2 for n in x], freq.few_shot, width, color=COLORS["accent"], label="few-shot (canonical)")
    axes[1].set_title(f"(B) as the answer to {freq.few_shot_prompt.split('. ')[-1]!r}")
    axes[1].legend(frameon=False)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("number")
        ax.set_xticks(x[::2])
    axes[0].set_ylabel("P(exactly this number)")
    return bind(fig)  # probabilities of single contexts and their mean: no interval
