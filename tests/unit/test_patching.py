"""The patching stage on a tiny model: pairs grown until enough err, the selection and
evaluation halves, the controls' resolution, the circuit's bookkeeping, the spacing test;
and the figures drawn from its results."""

import pytest
import torch
from helpers import make_params, random_sae, tiny_model

from analysis import errorsets, figurecheck, patching, patching_plots
from analysis.report import p_text
from analysis.errorsets import Read
from analysis.stats import Estimate


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3)


def erring_every(k: int):
    """read_answers as if the model gave W after the corrupt context of every k-th pair."""
    seen = {"n": 0}

    def read(model, items):
        start = seen["n"]
        seen["n"] += len(items)
        error = torch.tensor([(start + i) % k == 0 for i in range(len(items))])
        return Read({"corrupt": error, "clean": torch.zeros_like(error)},
                    {"corrupt": ~error, "clean": torch.ones_like(error)})
    return read


SETS = {"all3": {"kind": "placed", "n_shots": 3, "where": [0, 1, 2], "about": "every example answers W"},
        "last1": {"kind": "placed", "n_shots": 3, "where": [2], "about": "only the previous example"}}


def stage_params(**more):
    return make_params(**{"patching.sets": SETS, "patching.causal": ["all3"], "patching.circuit": ["all3"],
                          "patching.n_pairs": 12, "patching.min_erring": 10, "patching.max_pairs": 60,
                          "patching.random_draws": 20, "patching.draw_rows": 30, "patching.top_heads": 4,
                          "patching.top_latents": 3, "patching.circuit_sizes": [2, 5, 10, 20, 40],
                          "patching.circuit_size": 5, "patching.confirm_edges": 3, "patching.eap_ig_steps": 2,
                          "patching.eap_ig_pairs": 4,
                          "patching.min_gap": 0.001, "stats.bootstrap_resamples": 200,
                          "patching.alpha": 0.999, "patching.min_effect": 1e-9,
                          **more})


def test_a_causal_set_grows_until_enough_pairs_err(model, monkeypatch):
    monkeypatch.setattr(patching, "read_answers", erring_every(3))
    params = stage_params()
    items, read = patching.behaviour_pairs(model, params, "all3", params.patching.sets["all3"], torch.zeros(1, 1))
    assert int(read.error["corrupt"].sum()) >= 10 and len(items) == len(read.error["corrupt"])
    assert len(items) <= 60
    monkeypatch.setattr(patching, "read_answers", erring_every(3))
    few, _ = patching.behaviour_pairs(model, params, "last1", params.patching.sets["last1"], torch.zeros(1, 1))
    assert len(few) <= 12 < len(items)  # a set that is not causal keeps its n_pairs


def test_the_halves_are_disjoint_seeded_and_cover_the_erring_pairs():
    erring = list(range(3, 60, 2))
    chosen, held_out = errorsets.split(erring, seed=3)
    assert set(chosen).isdisjoint(held_out) and sorted(chosen + held_out) == erring
    assert abs(len(chosen) - len(held_out)) <= 1
    assert errorsets.split(erring, seed=3) == (chosen, held_out) != errorsets.split(erring, seed=4)


@pytest.fixture(scope="module")
def staged(model, tmp_path_factory):
    from analysis.artifacts import StagePaths

    root = tmp_path_factory.mktemp("patching")
    mp = pytest.MonkeyPatch()
    mp.setattr(patching, "read_answers", erring_every(2))
    sae = patching.LoadedSae(random_sae(32, 64), "blocks.1.hook_resid_pre", torch.rand(64))
    mp.setattr(patching, "load_saes", lambda *args: {"tiny": sae})
    mp.setattr(patching, "load_tensors", lambda *args: {"few_shot/answers": torch.zeros(1, 1, dtype=torch.long)})
    mp.setattr(patching, "holm", lambda p_values: p_values)  # a random model's heads: let some through (alpha 0.999)
    params = stage_params()
    try:
        metrics = patching.run(model, params, "tiny", StagePaths("tiny", "patching", root=root))
    finally:
        mp.undo()
    return params, metrics, patching.load_results(StagePaths("tiny", "patching", root=root))


def test_everything_is_chosen_on_one_half_and_measured_on_the_other(staged):
    params, metrics, loaded = staged
    assert loaded == metrics and set(metrics.sets) == set(SETS)
    s = metrics.sets["all3"]
    assert s.selection.n_pairs + s.evaluation.n_pairs == s.n_erring >= 10
    assert s.evaluation.before.error_rate.n == s.evaluation.n_pairs  # (a random model: the erring is faked)
    assert metrics.sets["last1"].selection is None and metrics.sets["last1"].evaluation is None
    tested = s.selection.components
    assert [c.node for c in tested if c.node.startswith("MLP")] == ["MLP0", "MLP1", "MLP2"]
    assert len([c for c in tested if c.node.startswith("L")]) == 4
    expected = [c.node for c in tested if c.node.startswith("L") and c.p_holm < params.patching.alpha
                and c.effect.mean >= params.patching.min_effect]
    assert s.selection.chosen_heads == expected


def test_controls_have_their_draws_and_their_floor(staged):
    params, metrics, _ = staged
    ev = metrics.sets["all3"].evaluation
    assert metrics.sets["all3"].selection.chosen_heads and set(ev.ablation) == {"mean", "zero"}
    for control in [ev.control] + [r.control for r in ev.latents]:
        assert control.draws == 20 == len(control.random_ld) == len(control.random_error)
        assert control.floor == pytest.approx(1 / 21)
        assert control.floor <= control.p_ld <= 1 and control.floor <= control.p_error <= 1
    (latents,) = ev.latents
    assert len(latents.latents) == 3 == len(set(latents.latents))
    assert latents.ablation.corrupt.error_rate.n == ev.n_pairs


def test_the_circuit_is_reported_at_every_size_with_its_edges(staged):
    _, metrics, _ = staged
    c = metrics.sets["all3"].evaluation.circuit
    assert c.sizes == [2, 5, 10, 20, 40] and len(c.faithfulness) == len(c.kept_without) == 5
    assert len(c.edges) == 5 and c.size == 5
    assert all(e.low <= e.mean <= e.high for e in c.faithfulness if e.low is not None)
    assert [abs(e.score) for e in c.confirmed] == sorted((abs(e.score) for e in c.confirmed), reverse=True)
    assert len(c.confirmed) == 3 and set(c.minimality) <= {e.sender for e in c.edges} | {
        e.receiver.split(".")[0] for e in c.edges}


def test_spacing_pairs_each_context_with_its_unspaced_twin(staged):
    _, metrics, _ = staged
    sp = metrics.examples.spacing
    assert sp.spaced.correct_rate.n == sp.unspaced.correct_rate.n == metrics.examples.n_contexts
    assert patching.unspace("1 + 1 = 2. 5 + 5 =") == "1+1=2. 5+5="
    same = patching.spacing_result([10, 6, 10], [10, 6, 10], {"correct": 10, "misconception": 6}, 0.95)
    assert same.p_value == 1.0 and same.spaced.error_rate.mean == pytest.approx(1 / 3)
    worse = patching.spacing_result([10] * 12, [3] * 12, {"correct": 10, "misconception": 6}, 0.95)
    assert worse.p_value == pytest.approx(2 * 0.5 ** 12) and worse.unspaced.correct_rate.high < 0.3


def test_the_figures_draw_from_the_results_and_state_their_n(staged):
    _, metrics, _ = staged
    n = metrics.sets["all3"].evaluation.n_pairs
    for plot in (patching_plots.plot_error_sets, patching_plots.plot_selection, patching_plots.plot_resid,
                 patching_plots.plot_ablation, patching_plots.plot_circuit):
        fig = plot(metrics)
        titles = " ".join(ax.get_title() for ax in fig.axes)
        labels = " ".join(t.get_text() for ax in fig.axes for t in ax.get_yticklabels())
        assert "n = " in titles + labels
    titles = [ax.get_title() for ax in patching_plots.plot_ablation(metrics).axes]
    control = metrics.sets["all3"].evaluation.control
    assert f"all3, n = {n}: p(ΔLD) {p_text(control.p_ld)}" in titles  # as the text prints p: 3 decimals
    assert f"all3, n = {n}: p(error) {p_text(control.p_error)}" in titles
    for plot in (patching_plots.plot_error_sets, patching_plots.plot_selection, patching_plots.plot_resid,
                 patching_plots.plot_ablation, patching_plots.plot_circuit):
        problems = figurecheck.check("fig-x", "", plot(metrics))
        assert not [p for p in problems if " says " in p], problems  # every n and p it draws is one it plots


def test_the_circuit_figure_says_when_there_is_none(staged):
    _, metrics, _ = staged
    empty = metrics.model_copy(update={"sets": {k: v.model_copy(update={"evaluation": None, "selection": None})
                                                for k, v in metrics.sets.items()}})
    assert patching_plots.circuit_set(empty) is None
    assert "no circuit" in patching_plots.plot_circuit(empty).axes[0].get_title()
    assert isinstance(metrics.sets["all3"].corrupt.error_rate, Estimate)
