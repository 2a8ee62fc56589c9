"""What every stage's main() adds around its run: the work it counts, the line it ends
with, its log, and progress bars that never touch the outputs."""

import json

import pytest
import torch
import yaml
from helpers import base_params_dict, char_tokenizer, overridden, tiny_model

from analysis import behaviour, stage
from analysis.artifacts import StagePaths
from analysis.timing import counting

SMALL = {"behaviour.max_operand": 5, "behaviour.n_contexts": 2, "stats.bootstrap_resamples": 200}


def test_counting_counts_every_forward_and_its_token_positions():
    model = tiny_model(char_tokenizer(), n_layers=2, seed=0)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 7))
    with counting(model) as work:
        model(tokens)  # 21 positions
        model.run_with_cache(tokens[:2, :5])  # 10
        model.run_with_hooks(tokens[0], stop_at_layer=1)  # one unbatched sequence: 7
        resid = model(tokens[:, :4], stop_at_layer=1)
        model(resid, start_at_layer=1)  # a residual stream (3, 4, d_model): 12
    assert (work.forward_passes, work.tokens) == (5, 21 + 10 + 7 + 12 + 12)
    model(tokens)
    assert work.forward_passes == 5  # the hook is gone after the block


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    """A scratch repository root with small behaviour params and a tiny model to load."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(overridden(base_params_dict(), SMALL)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "load_model", lambda key, params: tiny_model(char_tokenizer(), n_layers=1, seed=0))
    return tmp_path


def _outputs(root) -> dict[str, bytes]:
    found = [p for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts and p.name != "params.yaml"]
    return {str(p.relative_to(root)): p.read_bytes() for p in found}


def test_outputs_are_byte_identical_with_progress_bars_on_and_off(stage_dir, monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("ARITH_PROGRESS", "1")
    behaviour.main(["--model", "smollm2-135m"])
    drawn = capsys.readouterr().err
    with_bars = _outputs(stage_dir)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    behaviour.main(["--model", "smollm2-135m"])
    plain = capsys.readouterr().err
    assert "scoring prompts" in drawn and "batch/s" in drawn  # a bar was drawn
    assert "scoring prompts" not in plain and "batch/s" not in plain
    assert len(with_bars) >= 3 and _outputs(stage_dir) == with_bars


def test_stage_records_its_work_and_ends_with_one_line(stage_dir, capsys):
    behaviour.main(["--model", "smollm2-135m"])
    paths = StagePaths("smollm2-135m", "behaviour")
    results = json.loads(paths.results.read_text())
    work = results["work"]
    # 3 conditions (1 + 2 + 1 contexts) x 36 sums and 2 frequency calls over 11 numbers,
    # each batch a context forward plus answer and greedy steps: many passes, more tokens
    assert work["forward_passes"] > 10 and work["tokens"] > 10 * work["forward_passes"]
    headline = json.loads(paths.metrics.read_text())
    assert headline["work.forward_passes"] == work["forward_passes"] and headline["work.tokens"] == work["tokens"]
    log = json.loads(paths.log.read_text())
    assert (log["forward_passes"], log["tokens"]) == (work["forward_passes"], work["tokens"])
    assert log["run_s"] > 0 and log["load_s"] >= 0 and "run_s" not in results
    last = capsys.readouterr().err.strip().splitlines()[-1]
    seconds, line = last.split(" s, ", 1)
    assert seconds.startswith("behaviour@smollm2-135m: ") and abs(float(seconds.split()[-1]) - log["run_s"]) <= 0.06
    assert line == f"{work['forward_passes']:,} forward passes, {work['tokens']:,} tokens"
