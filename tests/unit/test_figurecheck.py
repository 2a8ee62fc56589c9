"""figurecheck: a figure's stated n, p-values and interval kinds must be those of the results
it plots; the label errors a reviewer found, planted, are caught."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from analysis import figurecheck  # noqa: E402
from analysis.stats import Estimate  # noqa: E402

COPY = Estimate(mean=0.3, low=0.2, high=0.4, n=40)  # percentile bootstrap (method None)
RATE = Estimate(mean=0.1, low=0.02, high=0.25, n=31, method="Clopper-Pearson")


@pytest.fixture
def figure():
    fig, ax = plt.subplots()
    yield fig, ax
    plt.close(fig)


def test_a_figure_labelled_with_the_n_it_plots_passes(figure):
    fig, ax = figure
    ax.set_title(f"copy series, n = {COPY.n}")
    figurecheck.bind(fig, [COPY])
    assert figurecheck.check("fig-x", "Mean with 95% percentile-bootstrap intervals.", fig) == []


def test_an_n_from_another_series_is_caught_in_the_title_and_in_the_caption(figure):
    fig, ax = figure
    ax.set_title("copy series, n = 64")  # the family's n on the copy series (Figs. 2, 4, 18 of the review)
    figurecheck.bind(fig, [COPY])
    problems = figurecheck.check("fig-x", "Bootstrap intervals over prompts, n = 64.", fig)
    assert [p for p in problems if "figure says n = 64" in p] and [p for p in problems if "caption says n = 64" in p]


def test_a_p_value_rounded_otherwise_than_any_it_plots_is_caught(figure):
    fig, ax = figure
    ax.set_title(f"n = {RATE.n}, p = 0.05")  # the text's p is 0.048 (Fig. 13 of the review)
    figurecheck.bind(fig, [RATE], p_values=[0.048])
    assert any("p = 0.05" in p for p in figurecheck.check("fig-x", "Exact (Clopper-Pearson) intervals.", fig))
    ax.set_title(f"n = {RATE.n}, p = 0.048")
    assert figurecheck.check("fig-x", "Exact (Clopper-Pearson) intervals.", fig) == []
    ax.set_title(f"n = {RATE.n}, p < 0.001")
    assert figurecheck.check("fig-x", "Exact (Clopper-Pearson) intervals.", fig)  # 0.048 is not below 0.001


def test_the_interval_kind_must_be_named_and_be_the_one_plotted(figure):
    fig, ax = figure
    ax.set_title(f"n = {RATE.n}")
    figurecheck.bind(fig, [RATE])
    wrong = figurecheck.check("fig-x", "Rates with 95% percentile-bootstrap intervals.", fig)
    assert any("names percentile bootstrap" in p for p in wrong)
    assert any("names no interval kind" in p for p in figurecheck.check("fig-x", "Error rates.", fig))


def test_a_figure_with_intervals_must_state_n_and_every_figure_must_bind(figure):
    fig, _ = figure
    assert "binds nothing" in figurecheck.check("fig-x", "Anything.", fig)[0]
    figurecheck.bind(fig, [COPY])
    assert any("states no n" in p for p in figurecheck.check("fig-x", "Percentile-bootstrap intervals.", fig))
    figurecheck.bind(fig, [])  # nothing more is bound: still no n
    assert any("states no n" in p for p in figurecheck.check("fig-x", "Percentile-bootstrap intervals.", fig))


def test_a_figure_with_nothing_to_show_may_keep_the_caption_of_what_it_would_draw(figure):
    fig, ax = figure
    ax.set_title("no set has enough erring pairs for a selection half")
    figurecheck.bind(fig, [], empty=True)
    assert figurecheck.check("fig-x", "Studentised 95% intervals of each component's effect.", fig) == []
    fig.arith_bound.empty = False  # the same figure claiming to draw them
    assert any("names studentized bootstrap" in p for p in figurecheck.check("fig-x", "Studentised intervals.", fig))
