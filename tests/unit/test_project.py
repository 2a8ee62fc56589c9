"""The project's wiring: DVC stages list what they import; dependencies are pinned."""

import ast
import importlib.metadata
import re
import tomllib

import yaml
from helpers import REPO


def _analysis_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Every analysis module that `module` imports, transitively (by reading the source)."""
    seen = seen if seen is not None else set()
    if module in seen:
        return seen
    seen.add(module)
    tree = ast.parse((REPO / "analysis" / f"{module}.py").read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "analysis" and len(parts) > 1 and (REPO / "analysis" / f"{parts[1]}.py").exists():
                _analysis_imports(parts[1], seen)
    return seen


def _stages():
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_depends_on_every_module_it_imports():
    for name, stage in _stages().items():
        do = stage["do"]
        module = re.search(r"python -m analysis\.(\w+)", do["cmd"]).group(1)
        needed = {f"analysis/{m}.py" for m in _analysis_imports(module)} | {"analysis/__init__.py"}
        if module == "paper":  # the manuscript's cells import analysis modules too
            qmd = (REPO / "paper" / "index.qmd").read_text()
            for used in re.findall(r"from analysis(?:\.(\w+))? import ([\w, ]+)", qmd):
                mods = [used[0]] if used[0] else [m.strip() for m in used[1].split(",")]
                for m in mods:
                    needed |= {f"analysis/{x}.py" for x in _analysis_imports(m)}
        missing = needed - set(do["deps"])
        assert not missing, f"stage {name} imports {sorted(missing)} but does not list them as deps"


def test_every_stage_names_params_sections_that_exist():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in _stages().items():
        for entry in stage["do"].get("params", []):
            top = entry.split(".")[0]
            assert top in params, f"stage {name} lists params {entry!r}, which params.yaml lacks"


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


def test_the_environment_is_the_pinned_cpu_one():
    assert importlib.metadata.version("torch").split("+")[0] == "2.13.0"
    cuda = [d.metadata["Name"] for d in importlib.metadata.distributions()
            if d.metadata["Name"].lower().startswith(("nvidia-", "triton"))]
    assert cuda == [], f"CUDA packages installed on a CPU machine: {cuda}"
