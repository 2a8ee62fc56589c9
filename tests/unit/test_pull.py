"""`analysis.pull` names every missing output, in a fixed order, whatever order DVC lists them in."""

import subprocess

import pytest

from analysis import pull

DVC_OUTPUT = """\
Collecting
ERROR: failed to pull data from the cloud - Checkout failed for following targets:
data/m/metrics/sae.json
data/m/figures/logit_lens.svg
data/m/metrics/logit_lens.json
data/m/figures/logit_lens.svg
Is your cache up to date?
<https://error.dvc.org/missing-files>
"""


def test_missing_targets_reads_the_paths_dvc_lists():
    assert pull.missing_targets(DVC_OUTPUT) == [
        "data/m/metrics/sae.json", "data/m/figures/logit_lens.svg",
        "data/m/metrics/logit_lens.json", "data/m/figures/logit_lens.svg"]
    assert pull.missing_targets("Everything is up to date.") == []


def test_the_message_lists_every_missing_output_once_sorted(monkeypatch):
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr=DVC_OUTPUT)
    monkeypatch.setattr(pull, "_dvc", lambda *args: failed)
    with pytest.raises(pull.PullError) as error:
        pull.pull_model("m", ("local", "/srv/remote"), {"m"})
    assert error.value.status == 6
    message = str(error.value)
    assert "m: 3 output(s) are in dvc.lock but missing from the remote 'local' (/srv/remote), or altered there" in message
    listed = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    assert listed == ["data/m/figures/logit_lens.svg", "data/m/metrics/logit_lens.json", "data/m/metrics/sae.json"]
    assert "`dvc push`" in message and "`dvc repro paper@m`" in message


def test_a_model_never_computed_is_named_with_how_to_compute_it():
    with pytest.raises(pull.PullError) as error:
        pull.pull_model("gpt2-small", ("local", "/srv/remote"), {"smollm2-135m"})
    assert error.value.status == 6 and "`make gpt2`" in str(error.value)


def test_no_default_remote_is_said_plainly(monkeypatch):
    answer = subprocess.CompletedProcess([], 251, stdout="No default remote set\n", stderr="")
    monkeypatch.setattr(pull, "_dvc", lambda *args: answer)
    with pytest.raises(pull.PullError) as error:
        pull.default_remote()
    assert error.value.status == 5 and str(error.value).startswith("no default DVC remote is configured")
    assert "No default remote set" not in str(error.value)


def test_pulling_every_model_skips_one_never_computed_and_succeeds(monkeypatch, capsys):
    pulled = []
    monkeypatch.setattr(pull, "default_remote", lambda: ("local", "/srv/remote"))
    monkeypatch.setattr(pull, "check_local_remote", lambda *remote: None)
    monkeypatch.setattr(pull, "ensure_verify", lambda name: None)
    monkeypatch.setattr(pull, "recorded_models", lambda: {"smollm2-135m"})
    monkeypatch.setattr(pull, "pull_model", lambda model, remote, recorded: pulled.append(model))
    with pytest.raises(SystemExit) as done:
        pull.main([])
        raise SystemExit(0)
    assert done.value.code == 0 and pulled == ["smollm2-135m"]
    captured = capsys.readouterr()
    assert captured.out == "smollm2-135m: pulled\n"
    assert "gpt2-small: not pulled, dvc.lock records no results for it" in captured.err
    monkeypatch.setattr(pull, "recorded_models", lambda: set())
    with pytest.raises(SystemExit) as nothing:
        pull.main([])
    assert nothing.value.code == 6
