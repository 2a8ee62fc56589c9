"""The cells that the paper builder (analysis/paper.py) adds to the manuscript's own when it
runs them in a Jupyter kernel: the kernel's set-up, the front matter's and each markdown
chunk's inline expressions (as Quarto asks for them), the parameters Quarto injects, the
check of each figure against its caption, and the report of the results files read. Each
hands its values back to the builder as a display under a MIME type of its own.
"""

from __future__ import annotations

from pathlib import Path

INLINE_MIME = "application/x-inline-values+json"
READS_MIME = "application/x-results-read+json"
FIGCHECK_MIME = "application/x-figure-check+json"

KERNEL_SETUP = """
from matplotlib.figure import Figure as _Figure
from analysis.artifacts import figure_svg as _figure_svg

_shown_figure = [None]  # the figure displayed last, for the figure check after its cell


def _as_svg(fig):
    _shown_figure[0] = fig
    return _figure_svg(fig).decode()


_formatters = get_ipython().display_formatter.formatters
_formatters["image/svg+xml"].for_type(_Figure, _as_svg)
_formatters["image/png"].pop(_Figure, None)
del _formatters
"""
READS_CELL = f"""
from IPython.display import display as _display
from analysis.artifacts import reads as _reads
_display({{{READS_MIME!r}: sorted(str(p) for p in _reads())}}, raw=True)
"""


def figure_check_cell(label: str, caption: str) -> str:
    """A cell, run right after a figure's, that checks the figure that cell displayed (kept
    by the set-up's SVG formatter: IPython's `_` is not updated once a manuscript assigns to
    it) against its caption (analysis/figurecheck.py), and forgets it."""
    return ("from IPython.display import display as _display\n"
            "from analysis.figurecheck import check as _check_figure\n"
            f"_display({{{FIGCHECK_MIME!r}: _check_figure({label!r}, {caption!r}, _shown_figure[0])}}, raw=True)\n"
            "_shown_figure[0] = None")


def inline_cell(expressions: list[str]) -> str:
    """A cell that evaluates the expressions as Jupyter user expressions (what Quarto asks
    the kernel for) and hands back each one's reply: a mime bundle, or an error."""
    exprs = {str(i): expr for i, expr in enumerate(expressions)}
    return ("from IPython.display import display as _display\n"
            f"_display({{{INLINE_MIME!r}: get_ipython().user_expressions({exprs!r})}}, raw=True)")


def injected_parameters(model: str, data_dir: Path | None) -> str:
    """The cell `quarto render -P model:<key>` injects: papermill's translation."""
    from papermill.translators import translate_parameters

    parameters = {"model": model, **({"data_dir": str(data_dir)} if data_dir else {})}
    return translate_parameters("python3", "python", parameters, "Injected Parameters")
