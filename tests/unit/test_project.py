"""The project's wiring: dvc.yaml is derived from the stage specs and the imports; no stage
imports another; functions stay short; params load without torch; dependencies are pinned."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from helpers import REPO

from analysis import pipeline
from analysis.params import StageSpec, stages


def _stages():
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_is_the_one_derived_from_the_stage_specs():
    result = subprocess.run([sys.executable, "-m", "analysis.pipeline", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (REPO / "dvc.yaml").read_text() == pipeline.render()


def test_every_stage_depends_on_exactly_the_modules_it_imports_and_the_data_it_declares():
    specs = stages()
    assert set(_stages()) == {*specs, "paper"}
    for name, stage in _stages().items():
        do = stage["do"]
        module = re.search(r"python -m analysis\.(\w+)", do["cmd"]).group(1)
        modules = pipeline.paper_imports() if name == "paper" else pipeline.analysis_imports(module)
        data = pipeline.paper_reads("${key}") if name == "paper" else \
            pipeline.declared_reads(name, specs[name], "${key}")
        files = pipeline.paper_files() if name == "paper" else []
        expected = {"analysis/__init__.py", *(f"analysis/{m}.py" for m in modules), *data, *files}
        assert set(do["deps"]) == expected, f"stage {name}: extra {set(do['deps']) - expected}, " \
                                            f"missing {expected - set(do['deps'])}"


def test_the_import_graph_is_read_from_the_source():
    assert {"sae", "saes", "params", "arithmetic", "artifacts"} <= pipeline.analysis_imports("sae")
    assert "heads" in pipeline.paper_imports() and "paper" in pipeline.paper_imports()


def test_no_stage_imports_another_stages_module():
    specs = set(stages())
    for name in specs:
        others = pipeline.analysis_imports(name) & (specs - {name})
        assert not others, f"stage {name} imports the stage module(s) {sorted(others)}"


def test_a_stage_that_reads_an_output_no_stage_writes_is_refused():
    with pytest.raises(ValueError, match="no other stage writes"):
        pipeline.declared_reads("sae", StageSpec(shared=(), reads=("heads:dir",)), "m")


def test_every_stage_names_params_sections_that_exist():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in _stages().items():
        for entry in stage["do"].get("params", []):
            top = entry.split(".")[0]
            assert top in params, f"stage {name} lists params {entry!r}, which params.yaml lacks"


def test_no_function_in_analysis_is_longer_than_sixty_lines():
    long = []
    for path in sorted((REPO / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_checking_params_imports_no_torch():
    code = "import sys, analysis.params, analysis.pipeline; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_lock_pins_every_package_exactly_and_agrees_with_pyproject():
    lines = [line for line in (REPO / "requirements.lock").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[\w.\-]+==[\w.\-+]+", line) for line in lines)
    assert pins["torch"] == "2.13.0"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in project:
        name, version = requirement.split("==")
        key = next(k for k in pins if k.lower().replace("_", "-") == name.lower().replace("_", "-"))
        assert pins[key] == version, f"{name}: pyproject {version}, lock {pins[key]}"


def test_torch_is_the_pinned_version_with_its_own_dependencies_installed():
    """A CPU build needs nothing beyond the lock; a CUDA build (a stock index's default)
    needs its nvidia-* libraries, which `make setup` installs with it."""
    import torch
    from packaging.requirements import Requirement

    assert importlib.metadata.version("torch").split("+")[0] == "2.13.0"
    needed = [Requirement(r) for r in importlib.metadata.requires("torch") or []]
    needed = [r for r in needed if r.marker is None or r.marker.evaluate({"extra": ""})]
    installed = {d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()}
    missing = [str(r) for r in needed if r.name.lower().replace("_", "-") not in installed]
    assert missing == [], f"torch's dependencies missing (installed with --no-deps?): {missing}"
    if torch.version.cuda is None:  # a CPU build: CUDA libraries would be gigabytes for nothing
        cuda = sorted(name for name in installed if name.startswith(("nvidia-", "triton")))
        assert cuda == [], f"CUDA packages installed beside a CPU torch: {cuda}"


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_setup_on_another_python_stops_at_once_naming_the_supported_versions(tmp_path, version):
    """`make` with an unsupported Python installs nothing and says which Python to use. The
    stand-in interpreter answers only the version question, as 3.12 or 3.13 would."""
    import shutil

    for name in ("Makefile", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)
    result = subprocess.run(["make", "setup", f"PYTHON={python}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert f"is Python {version}; supported: Python 3.11 only" in result.stderr
    assert "make PYTHON=python3.11" in result.stderr
    assert not (tmp_path / ".venv").exists()  # nothing was installed


def test_a_killed_writers_temporary_file_does_not_show_in_git_status():
    leftover = "data/smollm2-135m/.heads.json.k2x9a_1.tmp"  # the name atomic_write_bytes gives it
    assert subprocess.run(["git", "check-ignore", "-q", leftover], cwd=REPO).returncode == 0


def test_importing_analysis_sets_mkl_strict_mode_and_pins_avx2_only_when_asked():
    """`import analysis` sets MKL's thread-count-independent strict mode before torch runs;
    ARITH_PIN_AVX2=1 holds torch and MKL to AVX2 (README.md, "What reproduces where")."""
    import os
    import subprocess
    import sys

    from analysis import DEFAULT_NUMERICS, PINNED_NUMERICS

    code = ("import analysis, os, torch; torch.ones(2) @ torch.ones(2); "
            "print(torch.backends.cpu.get_cpu_capability(), os.environ.get('MKL_CBWR'))")
    clean = {k: v for k, v in os.environ.items() if k not in ("ARITH_PIN_AVX2", *PINNED_NUMERICS, *DEFAULT_NUMERICS)}
    default = subprocess.run([sys.executable, "-c", code], env={**clean, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, check=True).stdout.split()
    assert default[1] == "AUTO,STRICT"
    pinned = subprocess.run([sys.executable, "-c", code], env={**clean, "PYTHONPATH": str(REPO), "ARITH_PIN_AVX2": "1"},
                            capture_output=True, text=True, check=True).stdout.split()
    assert pinned == ["AVX2", "AVX2,STRICT"]


def _fake_checkout(root, model: str = "m") -> list:
    """dvc.yaml, dvc.lock (every stage of `model`, each with one dep and one output file,
    patching's output a folder), params.yaml and those files, all older than a stamp."""
    import os

    from analysis.params import stages

    names = [*stages(), "paper"]
    lock = {"stages": {f"{s}@{model}": {"deps": [{"path": f"analysis/{s}.py"}], "outs": [{"path": f"data/{s}"}]}
                       for s in names}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    files = [root / "dvc.yaml", root / "params.yaml", root / "dvc.lock"]
    for s in names:
        files.append(root / "analysis" / f"{s}.py")
        files.append(root / "data" / s / "part.bin" if s == "patching" else root / "data" / s)
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        if not f.exists():
            f.write_text("x")
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    os.utime(root / "data" / "patching", ns=(1_000_000_000, 1_000_000_000))  # the output folder itself
    (root / "stamp").write_text("")
    os.utime(root / "stamp", ns=(2_000_000_000, 2_000_000_000))
    return files


def test_make_skips_dvc_only_when_nothing_it_would_check_changed(tmp_path):
    import os

    from analysis.pipeline import unchanged_since

    files = _fake_checkout(tmp_path)
    stamp = tmp_path / "stamp"
    assert unchanged_since(stamp, "m", tmp_path)
    assert not unchanged_since(tmp_path / "no-stamp", "m", tmp_path)  # no make has finished here
    assert not unchanged_since(stamp, "other", tmp_path)  # stages dvc.lock does not record
    for changed in (tmp_path / "analysis" / "heads.py", tmp_path / "params.yaml",
                    tmp_path / "data" / "patching" / "part.bin"):  # a dep, the params, a file in an output folder
        os.utime(changed, ns=(3_000_000_000, 3_000_000_000))  # newer than the stamp
        assert not unchanged_since(stamp, "m", tmp_path), changed
        os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    assert unchanged_since(stamp, "m", tmp_path)
    (tmp_path / "data" / "sae").unlink()  # an output deleted
    assert not unchanged_since(stamp, "m", tmp_path)
    assert len(files) == 3 + 2 * (len(stages()) + 1)  # every stage and the paper: a dep and an output each
