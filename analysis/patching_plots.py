"""Figures of the patching stage, drawn from patching.json alone (the paper calls them;
nothing here loads a model). Every title that states an n or a p reads it from the same
results field as the values it plots."""

from __future__ import annotations

from matplotlib.figure import Figure

from analysis.errorsets import CircuitResult, Control, SetResult
from analysis.figurecheck import bind
from analysis.plotting import COLORS, error_bars, styled
from analysis.report import p_text
from analysis.stats import Estimate

MINUS = "\u2212"


def causal_sets(metrics) -> dict[str, SetResult]:
    """The sets with a selection and an evaluation half (enough erring pairs)."""
    return {name: s for name, s in metrics.sets.items() if s.evaluation is not None}


def _points(ax, y: int, estimates: list[Estimate], colors: list[str], labels: list[str], offset: float = 0.18):
    for k, (e, color, label) in enumerate(zip(estimates, colors, labels, strict=True)):
        at = y + (k - (len(estimates) - 1) / 2) * offset
        ax.errorbar([100 * e.mean], [at], xerr=[[100 * (e.mean - e.low)], [100 * (e.high - e.mean)]], fmt="o",
                    color=color, markersize=4, capsize=2, label=label if y == 0 else None)


@styled
def plot_error_sets(metrics) -> Figure:
    """Every error set: the share of greedy answers that are the error W after the corrupt and
    after the clean context, with Clopper-Pearson intervals; n pairs in each label."""
    names = list(metrics.sets)
    fig = Figure(figsize=(6.4, 0.42 * len(names) + 1.0), layout="constrained")
    ax = fig.subplots()
    for y, name in enumerate(names):
        s = metrics.sets[name]
        _points(ax, y, [s.corrupt.error_rate, s.clean.error_rate], [COLORS["misconception"], COLORS["correct"]],
                ["after the corrupt context", "after the clean context"])
    ax.set_yticks(range(len(names)), [f"{n} (n = {metrics.sets[n].n_pairs})" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(f"greedy answer is the error W (%; {metrics.ci_level:.0%} Clopper{MINUS}Pearson)")
    ax.set_xlim(left=0)
    ax.legend(frameon=False, loc="lower right")
    return bind(fig, [e for s in metrics.sets.values() for e in (s.corrupt.error_rate, s.clean.error_rate)])


@styled
def plot_selection(metrics) -> Figure:
    """The selection half of each causal set: every MLP and the tested heads patched exactly
    (clean into corrupt, studentised intervals; filled: Holm-adjusted p < alpha), with their
    attribution estimates; normalised when the set's clean-corrupt gap allows."""
    shown = causal_sets(metrics)
    fig = Figure(figsize=(6.8, 2.5 * max(1, len(shown))), layout="constrained")
    axes = fig.subplots(max(1, len(shown)), 2, squeeze=False)
    for row, (name, s) in enumerate(shown.items()):
        sel = s.selection
        unit = "normalised effect" if s.normalised else f"{MINUS}ΔLD (nats)"
        for col, kind in enumerate(("MLP", "L")):
            ax = axes[row, col]
            parts = [c for c in sel.components if c.node.startswith(kind)]
            x = range(len(parts))
            for i, c in zip(x, parts, strict=True):
                significant = c.p_holm < metrics.alpha
                ax.errorbar([i], [c.effect.mean], yerr=error_bars([c.effect]), fmt="o", capsize=2, markersize=4,
                            color=COLORS["accent"], markerfacecolor=COLORS["accent"] if significant else "white")
            ax.scatter(list(x), [c.attribution for c in parts], marker="x", color="black", s=14, zorder=3,
                       label="attribution")
            ax.axhline(0, color="black", linewidth=0.6)
            labels = [c.node[3:] if kind == "MLP" else c.node for c in parts]
            every = 5 if kind == "MLP" else 1  # thirty layer numbers side by side run together
            ax.set_xticks(list(x)[::every], labels[::every], rotation=0 if kind == "MLP" else 90, fontsize=6)
            ax.set_xlabel("MLP layer" if kind == "MLP" else "heads tested (top by attribution)")
            ax.set_ylabel(unit)
            ax.set_title(f"{name}: selection half, n = {sel.n_pairs}", fontsize=8)
            ax.legend(frameon=False, fontsize=6)
    if not shown:
        axes[0, 0].set_title("no set has enough erring pairs for a selection half", fontsize=8)
    return bind(fig, [c.effect for s in shown.values() for c in s.selection.components], empty=not shown)


@styled
def plot_resid(metrics) -> Figure:
    """Residual-stream patching on the selection half (layer x site, clean into corrupt) and
    attribution at the same sites; the colour scale is symmetric and clips at its ends."""
    shown = causal_sets(metrics)
    fig = Figure(figsize=(6.8, 2.4 * max(1, len(shown))), layout="constrained")
    axes = fig.subplots(max(1, len(shown)), 2, squeeze=False)
    for row, (name, s) in enumerate(shown.items()):
        sel = s.selection
        labels = [f"{site}\n{token.strip()[:6]!r}" for site, token in zip(sel.sites, sel.site_tokens, strict=True)]
        limit = max(abs(v) for grid in (sel.resid_exact, sel.resid_attribution) for r in grid for v in r) or 1.0
        for col, (grid, title) in enumerate(((sel.resid_exact, "exact, clean → corrupt"),
                                             (sel.resid_attribution, "attribution"))):
            ax = axes[row, col]
            image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
            ax.set_xticks(range(len(labels)), labels, fontsize=6)
            ax.set_yticks(range(len(sel.resid_layers)), sel.resid_layers, fontsize=6)
            ax.set_ylabel("layer")
            ax.set_title(f"{name} ({title}), n = {sel.n_pairs}", fontsize=8)
            ax.grid(False)
        fig.colorbar(image, ax=list(axes[row]), shrink=0.8,
                     label=f"{'normalised effect' if s.normalised else 'ΔLD (nats)'} (scale ±{limit:.2g}, the largest)")
    return bind(fig, ns=[s.selection.n_pairs for s in shown.values()], empty=not shown)  # means: no interval


def _histogram(ax, control: Control, values: list[float], observed: float, label: str, scale: int = 1):
    ax.hist([scale * v for v in values], bins=30, color=COLORS["control"], alpha=0.7,
            label=f"{control.draws} random draws")
    ax.axvline(scale * observed, color=COLORS["misconception"], linewidth=1.5, label="chosen")
    ax.set_xlabel(label)
    ax.set_ylabel("draws")


@styled
def plot_ablation(metrics) -> Figure:
    """The evaluation half: the chosen heads mean-ablated at the final position against the
    layer-matched random head sets, for ΔLD and for the error rate, with each p in the title."""
    shown = {n: s for n, s in causal_sets(metrics).items() if s.evaluation.control.draws}
    fig = Figure(figsize=(6.8, 2.3 * max(1, len(shown))), layout="constrained")
    axes = fig.subplots(max(1, len(shown)), 2, squeeze=False)
    for row, (name, s) in enumerate(shown.items()):
        ev = s.evaluation
        control, mean = ev.control, ev.ablation["mean"]
        _histogram(axes[row, 0], control, control.random_ld, mean.delta_ld.mean, "ΔLD after ablation (nats)")
        axes[row, 0].set_title(f"{name}, n = {ev.n_pairs}: p(ΔLD) {p_text(control.p_ld)}", fontsize=8)
        _histogram(axes[row, 1], control, control.random_error, mean.corrupt.error_rate.mean,
                   "error rate after ablation (%)", 100)
        axes[row, 1].set_title(f"{name}, n = {ev.n_pairs}: p(error) {p_text(control.p_error)}", fontsize=8)
        axes[row, 1].legend(frameon=False, fontsize=6)
    if not shown:
        axes[0, 0].set_title("no set has chosen heads to ablate", fontsize=8)
    return bind(fig, p_values=[p for s in shown.values() for p in (s.evaluation.control.p_ld, s.evaluation.control.p_error)],
                ns=[s.evaluation.n_pairs for s in shown.values()], empty=not shown)


def circuit_set(metrics) -> tuple[str, CircuitResult] | None:
    found = [(n, s.evaluation.circuit) for n, s in causal_sets(metrics).items() if s.evaluation.circuit is not None]
    return found[0] if found else None


def _layer_of(node: str) -> int:
    if node == "input":
        return -1
    return int(node[3:]) if node.startswith("MLP") else int(node[1:].split("H")[0])


@styled
def plot_circuit(metrics) -> Figure:
    """Left: the circuit at the params' size, nodes by layer, edges by EAP-IG score (red: the
    edge moves LD towards the error). Right: faithfulness and the share kept without the circuit against size on
    the evaluation half, percentile-bootstrap intervals."""
    found = circuit_set(metrics)
    fig = Figure(figsize=(6.8, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.8, 1])
    if found is None:
        left.set_axis_off()
        right.set_axis_off()
        left.set_title("no circuit was scored", fontsize=8)
        return bind(fig, empty=True)
    name, c = found
    nodes = sorted({e.sender for e in c.edges} | {e.receiver.split(".")[0] for e in c.edges}, key=lambda n: (
        _layer_of(n) if n != "logits" else 10**6, n))
    by_layer: dict[int, list[str]] = {}
    for node in nodes:
        by_layer.setdefault(_layer_of(node) if node != "logits" else 10**6, []).append(node)
    where = {}  # layers bottom (input) to top (logits), one row per layer present; a row's nodes side by side
    for y, (_, members) in enumerate(sorted(by_layer.items())):
        for k, node in enumerate(members):
            where[node] = (k - (len(members) - 1) / 2, y)
    widest = max(abs(e.score) for e in c.edges) or 1.0
    for e in c.edges:
        a, b = where[e.sender], where[e.receiver.split(".")[0]]
        color = COLORS["misconception"] if e.score > 0 else COLORS["correct"]
        left.annotate("", xy=b, xytext=a, zorder=1, arrowprops=dict(
            arrowstyle="-|>", color=color, alpha=0.6, lw=0.4 + 3 * abs(e.score) / widest, shrinkA=5, shrinkB=5,
            connectionstyle="arc3,rad=0.15"))
    for node, (x, y) in where.items():
        lost = c.minimality.get(node)
        text = node if lost is None else f"{node} {lost.mean:+.2f}"
        left.text(x, y, text, ha="center", va="center", fontsize=6.5, zorder=3,
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="black", linewidth=0.5))
    spread = max(len(m) for m in by_layer.values())
    left.set_xlim(-spread / 2 - 0.1, spread / 2 + 0.1)
    left.set_ylim(-0.6, len(by_layer) - 0.4)
    left.set_axis_off()
    f = c.faithfulness_at_size
    left.set_title(f"{name}: top {c.size} edges, faithfulness {f.mean:.2f} [{f.low:.2f}, {f.high:.2f}], "
                   f"n = {f.n}", fontsize=7)
    for estimates, label, color in ((c.faithfulness, "faithfulness (circuit kept)", COLORS["accent"]),
                                    (c.kept_without, "kept without it (circuit ablated)", COLORS["control"])):
        right.errorbar(c.sizes, [e.mean for e in estimates], yerr=error_bars(estimates), fmt="o-", capsize=2,
                       markersize=3, color=color, label=label)
    right.set_xscale("log")
    right.axhline(1, color="black", linewidth=0.5, linestyle=":")
    right.axhline(0, color="black", linewidth=0.5)
    right.set_xlabel("edges in the circuit")
    right.set_ylabel("share of the LD gap")
    right.set_title(f"evaluation half, n = {c.faithfulness[0].n if c.faithfulness else 0}", fontsize=8)
    right.legend(frameon=False, fontsize=6)
    return bind(fig, [f, *c.faithfulness, *c.kept_without])
