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
    "savefig.bbox": "tight",
    "svg.hashsalt": "arith-mismatch",
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


def quote_token(token: str) -> str:
    """A token as a readable label: quoted, with spaces and newlines visible."""
    return "'" + token.replace("\n", "\\n") + "'"
