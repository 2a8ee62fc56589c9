"""Results files: deterministic bytes, atomic writes, schema checks on read."""

import json
import os
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from analysis import artifacts
from analysis.artifacts import ArtifactError, load_json, load_tensors, save_json, save_tensors, to_json_bytes


class Small(BaseModel):
    name: str
    values: list[float]


def test_json_is_sorted_and_round_trips_floats_exactly():
    obj = {"b": [0.1, 1 / 3], "a": {"z": 1, "y": 2.5e-10}}
    data = to_json_bytes(obj)
    assert data == to_json_bytes(dict(reversed(list(obj.items()))))
    assert list(json.loads(data)) == ["a", "b"]
    assert json.loads(data)["b"][1] == 1 / 3
    assert data.endswith(b"\n")


def test_json_refuses_non_finite_values():
    with pytest.raises(ValueError, match=r"x\[1\]"):
        to_json_bytes({"x": [1.0, float("nan")]})


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    save_json(path, {"v": 1})

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "x.json"
    save_json(path, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_schema_mismatch_names_the_file_and_field(tmp_path):
    path = tmp_path / "m.json"
    save_json(path, {"name": "x", "values": ["not a number"]})
    with pytest.raises(ArtifactError, match=r"m.json: does not match the Small schema at values.0"):
        load_json(path, Small)
    with pytest.raises(ArtifactError, match="missing. Run `dvc pull`"):
        load_json(tmp_path / "absent.json", Small)


def test_truncated_tensor_file_is_reported(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.arange(100.0)})
    assert load_tensors(path, {"a": (100,)})["a"][7] == 7.0
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ArtifactError, match="unreadable safetensors"):
        load_tensors(path)


def test_tensor_shape_is_checked(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.zeros(3, 4)})
    with pytest.raises(ArtifactError, match=r"shape \(3, 4\), expected \(4, 3\)"):
        load_tensors(path, {"a": (4, 3)})


def test_the_same_figure_gives_the_same_bytes(tmp_path):
    from matplotlib.figure import Figure

    def draw():
        fig = Figure()
        fig.subplots().plot([0, 1, 2], [2, 0, 1], label="x")
        fig.axes[0].legend()
        return fig

    a, b = artifacts.figure_svg(draw()), artifacts.figure_svg(draw())
    assert a == b and b"<dc:date>" not in a


def test_reads_are_recorded_so_undeclared_dependencies_can_be_found(tmp_path):
    from analysis.pipeline import undeclared_reads

    save_json(tmp_path / "data" / "m" / "metrics" / "a.json", {"name": "a", "values": [1.0]})
    load_json(tmp_path / "data" / "m" / "metrics" / "a.json", Small)
    read = artifacts.reads()
    assert (tmp_path / "data" / "m" / "metrics" / "a.json").resolve() in read
    declared = ["data/m/metrics/b.json"]
    assert undeclared_reads(read, declared, own=[], root=tmp_path) == (["data/m/metrics/a.json"],
                                                                       ["data/m/metrics/b.json"])
    assert undeclared_reads(read, ["data/m/metrics"], own=[], root=tmp_path) == ([], [])
    assert undeclared_reads(read, [], own=["data/m/metrics/a.json"], root=tmp_path) == ([], [])


def test_a_write_removes_what_a_killed_writer_left(tmp_path):
    stale = tmp_path / ".out.json.abc123.tmp"
    stale.write_text("half a file")
    other = tmp_path / ".other.json.abc123.tmp"
    other.write_text("not ours")
    save_json(tmp_path / "out.json", {"v": 1})
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc123.tmp", "out.json"]


def test_a_directory_output_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sae_train"

    def write(folder):
        (folder / "a.txt").write_text("a")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        artifacts.atomic_write_dir(target, write)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    artifacts.atomic_write_dir(target, lambda folder: (folder / "b.txt").write_text("b"))
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_a_results_file_with_nan_or_infinity_is_refused_naming_the_field(tmp_path):
    from analysis.artifacts import ArtifactError, Schema, load_json

    class Result(Schema):
        name: str
        values: list[float]

    path = tmp_path / "r.json"
    path.write_text('{"name": "x", "values": [0.5, NaN]}')
    with pytest.raises(ArtifactError, match=r"r\.json: values\[1\]: not a finite number"):
        load_json(path, Result)
    path.write_text('{"name": "x", "values": [Infinity]}')
    with pytest.raises(ArtifactError, match=r"values\[0\]: not a finite number"):
        load_json(path, Result)


@pytest.mark.parametrize("kill_at", ["first rename", "second rename", "removing the old folder"])
def test_a_folder_write_killed_at_any_step_leaves_the_old_folder_whole_or_none(tmp_path, monkeypatch, kill_at):
    """Replacing a folder: the old one is renamed aside, the new one renamed in, then the
    old one deleted. A kill at any of those steps never leaves a mix of the two."""
    from analysis.artifacts import atomic_write_dir

    target = tmp_path / "out"

    def write(text):
        return lambda folder: [(folder / name).write_text(text) for name in ("a", "b")]

    atomic_write_dir(target, write("old"))
    real_replace, real_rmtree, calls = os.replace, artifacts.shutil.rmtree, []

    def replace(src, dst, *args, **kwargs):
        calls.append("rename")
        if (kill_at, calls.count("rename")) in (("first rename", 1), ("second rename", 2)):
            raise KeyboardInterrupt  # what a kill looks like to the code that follows: nothing more runs
        return real_replace(src, dst, *args, **kwargs)

    def rmtree(path, *args, **kwargs):
        if kill_at == "removing the old folder" and calls.count("rename") == 2 and "killed" not in calls:
            calls.append("killed")
            next(Path(path).iterdir()).unlink()  # half deleted, then killed
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(artifacts.os, "replace", replace)
    monkeypatch.setattr(artifacts.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(target, write("new"))
    monkeypatch.undo()
    if target.exists():
        contents = {p.name: p.read_text() for p in target.iterdir()}
        assert contents in ({"a": "old", "b": "old"}, {"a": "new", "b": "new"})
    else:
        assert kill_at == "second rename"  # between the two renames: none, and the old one aside in a .tmp
    atomic_write_dir(target, write("new"))  # the next write cleans up what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


class _Lens(artifacts.Schema):
    label: str
    count: int
    prob: artifacts.Prob
    by_name: dict[str, float]


GOOD = {"label": "x", "count": 3, "prob": 0.25, "by_name": {"copy": 1.0}}
HOSTILE_RESULTS = [
    # (id, the file's text, the field named, why)
    ("a 5 MB string", lambda: json.dumps({**GOOD, "label": "x" * 5_000_000}), "label", "5,000,000 characters"),
    ("1e308 as a probability", lambda: json.dumps({**GOOD, "prob": 1e308}), "prob", "beyond any value"),
    ("2 as a probability", lambda: json.dumps({**GOOD, "prob": 2.0}), "prob", "less than or equal to 1"),
    ("a float for an integer", lambda: json.dumps({**GOOD, "count": 3.0}), "count", "valid integer"),
    ("a string for a number", lambda: json.dumps({**GOOD, "prob": "0.25"}), "prob", "valid number"),
    ("a key given twice", lambda: json.dumps(GOOD)[:-1] + ', "count": 4}', "", "the key 'count' appears twice"),
    ("markup as a key", lambda: json.dumps({**GOOD, "by_name": {"<img src=x onerror=alert(1)>": 1.0}}), "by_name",
     "is not a name a stage writes"),
    ("nesting 100,000 deep", lambda: '{"label": ' + "[" * 100_000 + "]" * 100_000 + "}", "", "nested deeper"),
    ("nesting 20 deep", lambda: json.dumps({**GOOD, "by_name": {"a": __import__("functools").reduce(
        lambda v, _: [v], range(20), 1.0)}}), "by_name.a", "nested deeper than 16"),
]


@pytest.mark.parametrize(("text", "field", "why"), [c[1:] for c in HOSTILE_RESULTS], ids=[c[0] for c in HOSTILE_RESULTS])
def test_hostile_results_are_refused_naming_the_file_and_the_field(tmp_path, text, field, why):
    import time

    from analysis.artifacts import ArtifactError, load_json

    path = tmp_path / "lens.json"
    path.write_text(text())
    start = time.perf_counter()
    with pytest.raises(ArtifactError) as error:
        load_json(path, _Lens)
    assert time.perf_counter() - start < 2
    message = str(error.value)
    assert message.startswith(f"{path}: ") and field in message and why in message, message
    assert len(message) < 400 and "\n" not in message


def test_two_writers_of_one_output_never_delete_each_others_temporary_files(tmp_path):
    """Each writer's temporary file carries its process id; only a dead writer's is cleared."""
    import subprocess
    import sys

    script = ("import sys\nfrom analysis.artifacts import save_json\n"
              "for i in range(40):\n    save_json(sys.argv[1], {'writer': sys.argv[2], 'i': i, 'pad': 'x' * 200000})\n")
    target = tmp_path / "out.json"
    writers = [subprocess.Popen([sys.executable, "-c", script, str(target), str(w)], stderr=subprocess.PIPE, text=True)
               for w in range(2)]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    assert json.loads(target.read_text())["i"] == 39
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
