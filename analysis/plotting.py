"""The figures' shared look: one style, one colour per answer role."""

from __future__ import annotations

import functools

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

COLORS = {
    "correct": "#1f77b4",
    "misconception": "#d62728",
    "control": "#7f7f7f",
    "accent": "#ff7f0e",
}

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
    "text.parse_math": False,  # labels hold tokens from results files: '$' is a dollar sign, never TeX
}


def styled(func):
    """Run a plot function under the shared style.

    Plot functions build a `Figure()` directly rather than through pyplot, so nothing is
    registered globally: the figure is displayed once where the paper returns it, and
    freed when dropped.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> Figure:
        with plt.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def error_bars(estimates: list) -> list[list[float]]:
    """matplotlib's yerr for Estimates: distances from each mean to its interval's ends."""
    return [[e.mean - e.low for e in estimates], [e.high - e.mean for e in estimates]]


def ablation_bars(ax, labels: list[str], effects: list[dict]) -> list:
    """Paired bars with intervals: the change in P(correct) and in P(copy of the previous
    answer) when each labelled component is ablated; effects[i][answer] is an Estimate.
    Each series' legend states its n (the copy is measured on fewer prompts). Returns the
    estimates drawn (for figurecheck.bind)."""
    width = 0.38
    drawn = []
    for offset, answer, color, name in ((-width / 2, "correct", COLORS["correct"], "P(correct)"),
                                        (width / 2, "copy", COLORS["misconception"], "P(copy of previous answer)")):
        estimates = [effect[answer] for effect in effects]
        ns = sorted({e.n for e in estimates})
        ax.bar([i + offset for i in range(len(labels))], [e.mean for e in estimates], width, color=color, capsize=2,
               yerr=error_bars(estimates), label=f"{name}, n = {', '.join(map(str, ns))}")
        drawn += estimates
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("change in probability")
    ax.legend(frameon=False, fontsize=7)
    return drawn
