"""Figures whose labels say what they show: the n, p-values and interval kinds in a figure's
caption and in its drawn text, checked against the results the figure plots.

Not a stage: the paper builder runs it on every figure it builds (analysis/paper.py), the
way numbercheck binds the text. A plot function binds its figure to the results it draws
(`bind(fig, estimates, p_values)`): the Estimates whose means and intervals it plots and
the p-values it prints. The check then refuses

- an "n = X" in the caption or the figure's text that no bound estimate has (a copy
  series of 40 labelled with the family's 64);
- a "p = Y" or "p < Y" that no bound p-value gives as the paper shows p-values (three
  decimals: a title's "p = 0.05" for the text's 0.048);
- an interval kind in the caption (percentile bootstrap, studentised bootstrap,
  Clopper–Pearson) that none of the bound estimates was computed with, and a caption
  that names no interval kind for a figure that draws intervals;
- a figure that draws intervals and states no n anywhere;
- a figure that nothing bound (every figure declares what it plots, possibly nothing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

N_STATED = re.compile(r"\bn\s*=\s*(\d[\d,]*)")
P_STATED = re.compile(r"\bp(?:\([^)]*\))?\s*([=<])\s*(\d*\.\d+|\d+)")  # p = 0.012, p(error) < 0.001
KINDS = {  # the words that name each interval method, as Estimate.method spells it (None: percentile)
    "percentile bootstrap": re.compile(r"percentile[- ]bootstrap|bootstrap interval|bootstrap over", re.I),
    "studentized bootstrap": re.compile(r"studenti[sz]ed", re.I),
    "Clopper-Pearson": re.compile(r"Clopper|exact interval", re.I),
}


@dataclass
class Bound:
    """What a figure plots: the n and method of each estimate, and the p-values it prints."""

    ns: set[int] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    p_values: list[float] = field(default_factory=list)
    empty: bool = False  # the figure says there is nothing to show (no set reached the analysis)


def bind(fig, estimates: Iterable = (), p_values: Iterable[float] = (), ns: Iterable[int] = (),
         methods: Iterable[str] = (), empty: bool = False):
    """Attach to `fig` the estimates it draws and the p-values it prints (and, for series
    that are not Estimates, their n and interval method); `empty`: the figure only says that
    there is nothing to show, so its caption describes what it would draw. Returns fig."""
    bound = getattr(fig, "arith_bound", None) or Bound()
    bound.empty = bound.empty or empty
    bound.ns |= {int(n) for n in ns}
    bound.methods |= set(methods)
    for e in estimates:
        if e is None or getattr(e, "mean", None) is None:
            continue
        bound.ns.add(int(e.n))
        if e.low is not None:
            bound.methods.add(e.method or "percentile bootstrap")
    bound.p_values += [float(p) for p in p_values]
    fig.arith_bound = bound
    return fig


def drawn_text(fig) -> str:
    """Every string the figure draws: titles, axis labels, tick labels, legends, annotations."""
    texts = [fig._suptitle.get_text() if fig._suptitle else ""] + [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts += [ax.get_title(loc) for loc in ("left", "center", "right")]
        texts += [ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        texts += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        legend = ax.get_legend()
        if legend:
            texts += [t.get_text() for t in legend.get_texts()] + [legend.get_title().get_text()]
    return "\n".join(t for t in texts if t)


def _p_shown(text: str, op: str, bound: list[float]) -> bool:
    """Whether a bound p-value is shown so, as the paper shows p: three decimals, four at a
    control's floor (1/1001), and "< 0.001" below that."""
    if op == "<":
        return any(p < float(text) for p in bound)
    return any(text == f"{p:.3f}" or (0.0009 <= p < 0.001 and text == f"{p:.4f}") for p in bound)


def check(label: str, caption: str, fig) -> list[str]:
    """What is wrong with a figure's labels; empty when everything stated is bound."""
    bound: Bound | None = getattr(fig, "arith_bound", None)
    if bound is None:
        return [f"{label}: its plot function binds nothing (figurecheck.bind): what it shows cannot be checked"]
    problems = []
    drawn = drawn_text(fig)
    for where, text in (("caption", caption), ("figure", drawn)):
        for match in N_STATED.finditer(text):
            n = int(match.group(1).replace(",", ""))
            if n not in bound.ns:
                problems.append(f"{label}: the {where} says n = {n}, but what it plots has n in {sorted(bound.ns)}")
        for op, value in P_STATED.findall(text):
            if not _p_shown(value, op, bound.p_values):
                problems.append(f"{label}: the {where} says p {op} {value}, which no p-value it plots gives")
    named = {kind for kind, words in KINDS.items() if words.search(caption)}
    for kind in sorted(named - bound.methods) if not bound.empty else ():
        problems.append(f"{label}: the caption names {kind} intervals; what it plots has {sorted(bound.methods) or 'none'}")
    if bound.methods and not named:
        problems.append(f"{label}: it draws {sorted(bound.methods)} intervals and its caption names no interval kind")
    if bound.methods and not N_STATED.search(caption + "\n" + drawn):
        problems.append(f"{label}: it draws intervals and states no n (in its caption or its own text)")
    return problems
