"""`make verify`'s comparison: what passes, what fails, and that a failure names the number."""

from __future__ import annotations

import json

import torch
from helpers import make_params

from analysis.artifacts import save_json, save_tensors
from analysis import verify
from analysis.params import Tolerance
from analysis.verify import Comparison, compare_json, compare_stage, compare_tensors, report, with_upstream

TOL = Tolerance(abs=1e-5, rel=1e-3)


def compared(a, b) -> Comparison:
    out = Comparison()
    compare_json(a, b, "f.json", TOL, out)
    return out


def test_reals_within_tolerance_pass_and_the_largest_deviation_is_kept():
    out = compared({"p": 0.5, "n": 3, "xs": [1.0, 2.0]}, {"p": 0.5004, "n": 3, "xs": [1.0, 2.0]})
    assert out.failures == [] and out.numbers == 4
    assert out.largest[1] == "f.json.p" and abs(out.largest[0] - 0.0004) < 1e-12


def test_a_real_beyond_tolerance_fails_naming_its_path_and_values():
    out = compared({"a": {"b": [0.1, 0.25]}}, {"a": {"b": [0.1, 0.26]}})
    [failure] = out.failures
    assert failure.where == "f.json.a.b[1]" and (failure.committed, failure.recomputed) == (0.25, 0.26)
    assert "f.json.a.b[1]: 0.25 here, 0.26 recomputed" in str(failure)


def test_integers_labels_and_structure_must_be_equal():
    out = compared({"n": 3, "head": "L8H6", "ok": True, "xs": [1, 2]},
                   {"n": 4, "head": "L8H7", "ok": False, "xs": [1, 2, 3], "new": 1})
    where = {f.where for f in out.failures}
    assert where == {"f.json.n", "f.json.head", "f.json.ok", "f.json.xs (length)", "f.json.new"}


def test_a_nan_is_never_within_tolerance():
    assert compared({"x": 1.0}, {"x": float("nan")}).failures


def test_tensors_compare_elementwise_and_name_the_worst_element(tmp_path):
    a = {"x": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "ids": torch.tensor([1, 2])}
    b = {"x": torch.tensor([[1.0, 2.0], [3.5, 4.0001]]), "ids": torch.tensor([1, 2])}
    save_tensors(tmp_path / "a.safetensors", a)
    save_tensors(tmp_path / "b.safetensors", b)
    out = Comparison()
    compare_tensors(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "t", Tolerance(abs=1e-4, rel=1e-3), out)
    assert out.numbers == 6
    [failure] = out.failures  # 4.0001 is within 1e-4 + 1e-3 * 4; 3.5 is not
    assert failure.where.startswith("t:x[flat 2]") and (failure.committed, failure.recomputed) == (3.0, 3.5)
    save_tensors(tmp_path / "c.safetensors", {**a, "ids": torch.tensor([1, 3])})
    out = Comparison()
    compare_tensors(tmp_path / "a.safetensors", tmp_path / "c.safetensors", "t", TOL, out)
    assert [f.where for f in out.failures] == ["t:ids[flat 1]"]


def test_a_stage_compares_results_tensors_and_metrics_and_reports_a_missing_file(tmp_path, capsys):
    params = make_params()
    here, scratch = tmp_path / "here", tmp_path / "scratch"
    for root, value in ((here, 0.5), (scratch, 0.5)):
        save_json(root / "data/m/logit_lens.json", {"p": value})
        save_tensors(root / "data/m/logit_lens.safetensors", {"x": torch.ones(3)})
        save_json(root / "metrics/m/logit_lens.json", {"p": value})
    out = compare_stage("logit_lens", "m", here, scratch, params)
    assert out.failures == [] and out.numbers == 5
    assert report({"logit_lens": out}) == 0
    (scratch / "metrics/m/logit_lens.json").unlink()
    save_json(here / "data/m/logit_lens.json", {"p": 0.6})
    out = compare_stage("logit_lens", "m", here, scratch, params)
    assert report({"logit_lens": out}) == 1
    printed = capsys.readouterr().out
    assert "data/m/logit_lens.json.p: 0.6 here, 0.5 recomputed" in printed
    assert "metrics/m/logit_lens.json: '(present)' here, '(missing)' recomputed" in printed


def test_a_stage_is_recomputed_with_the_stages_it_reads():
    assert with_upstream(["sae"]) == ["sae_train", "sae"]
    assert with_upstream(["logit_lens", "patching"]) == ["logit_lens", "behaviour", "sae_train", "patching"]


def _sae_folder(folder, w_dec, firing):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"W_dec": w_dec}, folder / "sae_weights.safetensors")
    save_file({"firing_rate": firing}, folder / "stats.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"d_sae": w_dec.shape[0]}))


def test_a_retrained_sae_is_judged_by_matching_its_latents_against_the_seed_spread(tmp_path):
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(32, 8, generator=generator)
    firing = torch.ones(32)
    _sae_folder(tmp_path / "here" / "res", w, firing)
    _sae_folder(tmp_path / "same" / "res", w[torch.randperm(32, generator=generator)] * 2.0, firing)  # permuted, scaled
    _sae_folder(tmp_path / "other" / "res", torch.randn(32, 8, generator=generator), firing)
    spread = {"res": verify.SeedSpread(quality={}, threshold=0.9, matched=0.5)}
    params = make_params()
    found = verify.Comparison()
    verify.compare_file(tmp_path / "here", tmp_path / "same", "sae_train", params, found, spread)
    assert found.failures == [] and found.numbers == 2  # the matching, and cfg.json's one integer
    other = verify.Comparison()
    verify.compare_file(tmp_path / "here", tmp_path / "other", "sae_train", params, other, spread)
    [failure] = other.failures
    assert "latents found again at cosine >= 0.9" in failure.where and failure.committed < 0.5
    bits = verify.Comparison()  # without a seed spread, element by element: the permuted copy fails
    verify.compare_file(tmp_path / "here", tmp_path / "same", "sae_train", params, bits)
    assert bits.failures


def test_quality_numbers_of_a_trained_sae_may_differ_by_the_seed_spread():
    out = verify.Comparison()
    here = {"saes": {"res": {"quality": {"explained_variance": 0.975, "l0": 32.0}}}}
    there = {"saes": {"res": {"quality": {"explained_variance": 0.972, "l0": 32.0}}}}
    tol = make_params().verify.reals
    verify.compare_json(here, there, "sae_train.json", tol, out, {"res.quality.explained_variance": 0.004})
    assert out.failures == []
    verify.compare_json(here, there, "sae_train.json", tol, out, {"res.quality.explained_variance": 0.001})
    assert len(out.failures) == 1 and out.failures[0].where.endswith("explained_variance")
