"""Where stage outputs live, and how they are written and read.

Every write is atomic (a temporary file in the same folder, fsync, then a rename), so a
stage killed at any point leaves either the old file or the new one, never half of one.
Every format is deterministic: safetensors for tensors, JSON with sorted keys and
Python's shortest round-trip float repr, SVG figures with fixed metadata and hash salt.
Reads check the results against their schema (`ArtifactError` names the file and field).

Layout, for a model key M and a stage S (params.OUTPUTS and params.METRICS):
    data/M/S.safetensors        tensors                                        (DVC-cached)
    data/M/S.json               results: scalars and small lists the paper quotes  (DVC-cached)
    data/M/S/                   a folder, for outputs in other formats (trained SAEs)
    metrics/M/S.json            headline metrics, a few dozen numbers          (git-tracked)
Figures are drawn by the paper, from these files, with the stages' plot_* functions.

Every results file read through this module is recorded (`reads()`), so that a stage or
the paper can be checked to read exactly the dependencies dvc.yaml declares.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from analysis.params import METRICS, OUTPUTS

DATA_DIR = Path("data")
_READS: set[Path] = set()
_UMASK = os.umask(0)
os.umask(_UMASK)


class ArtifactError(RuntimeError):
    """A results file that is missing or does not match what the reader expects."""


@dataclass(frozen=True)
class StagePaths:
    model: str
    stage: str
    root: Path = DATA_DIR

    @property
    def model_dir(self) -> Path:
        return self.root / self.model

    def _output(self, kind: str) -> Path:
        return self.model_dir / OUTPUTS[kind].format(stage=self.stage)

    @property
    def tensors(self) -> Path:
        return self._output("tensors")

    @property
    def results(self) -> Path:
        return self._output("results")

    @property
    def log(self) -> Path:
        """This run's wall time and work, beside data/: logs/<model>/<stage>.json (git-ignored,
        not a DVC output, since no two runs take the same time)."""
        return self.root.parent / "logs" / self.model / f"{self.stage}.json"

    @property
    def metrics(self) -> Path:
        """The headline metrics, beside data/: metrics/<model>/<stage>.json."""
        return self.root.parent / METRICS.format(model=self.model, stage=self.stage)

    def plot(self, name: str) -> Path:
        """The data of one of the stage's plots: metrics/<model>/<stage>_<name>.csv."""
        return self.metrics.with_name(f"{self.stage}_{name}.csv")

    @property
    def dir(self) -> Path:
        return self._output("dir")


def record_read(path: Path) -> None:
    """Note that a results file (or folder) was read; readers here call it themselves."""
    _READS.add(Path(path).resolve())


def reads() -> set[Path]:
    """Every results path read in this process so far."""
    return set(_READS)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give outputs the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary sibling folder with write(folder), then rename it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(tmp)
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers make owner-only modes
            path.chmod((0o777 if path.is_dir() else 0o666) & ~_UMASK)
        if target.exists():  # renamed aside, not deleted in place: a kill leaves the old folder or none
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_finite(obj: Any, where: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite value {obj!r} at {where or '(top)'}; JSON results must be finite")
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_finite(value, f"{where}[{i}]")


def to_json_bytes(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, shortest round-trip floats, a final newline."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    _check_finite(obj)
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def save_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, to_json_bytes(obj))


class Schema(BaseModel):
    """The base of every results file's schema: a field it does not declare is an error."""

    model_config = ConfigDict(extra="forbid")


class WorkDone(Schema):
    forward_passes: int  # through the model, whole or from/to a layer
    tokens: int  # token positions those passes ran (batch × positions)


class StageResults(Schema):
    """The base of every stage's results: `work` is filled in by the stage's main() (the
    results of a bare run() have none). Wall time is not a result: it lives in logs/."""

    work: WorkDone | None = None


M = TypeVar("M", bound=BaseModel)


def non_finite(value: Any, where: str = "(top level)") -> str | None:
    """The path of the first NaN or infinity in a parsed JSON value, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite(item, f"{where}.{key}" if where != "(top level)" else str(key))
        if found is not None:
            return found
    return None


def load_json(path: Path, schema: type[M]) -> M:
    """Read a results file and check it against its schema."""
    path = Path(path)
    record_read(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing. Run `dvc pull` (or `dvc repro`) to get it.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); restore it with `dvc checkout --force {path}`") from None
    where = non_finite(raw)
    if where is not None:
        raise ArtifactError(f"{path}: {where} is not a finite number (NaN or infinity); no stage writes one. "
                            f"Restore it with `dvc checkout --force {path}` or rebuild it with `dvc repro`.")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ArtifactError(
            f"{path}: does not match the {schema.__name__} schema at {field}: {first['msg']}. "
            f"Restore it with `dvc checkout --force {path}` or rebuild it with `dvc repro`."
        ) from None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar leaf of a parsed JSON value, keyed by its dotted path; lists are skipped."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {} if isinstance(obj, list) or obj is None else {prefix.rstrip("."): obj}


def headline(results: Any, patterns: tuple[str, ...], digits: int = 4) -> dict[str, int | float]:
    """The numbers of `results` whose dotted path matches one of `patterns` (fnmatch), floats
    rounded to `digits` significant digits: what `dvc metrics show` lists for a stage."""
    leaves = flatten(results)
    picked = {path: value for path, value in leaves.items()
              if any(fnmatch.fnmatchcase(path, p) for p in patterns)
              and isinstance(value, int | float) and not isinstance(value, bool)}
    if not picked:
        raise ValueError(f"no headline number matches {patterns}")
    return {path: float(f"{value:.{digits}g}") if isinstance(value, float) else value
            for path, value in sorted(picked.items())}


def to_csv_bytes(rows: list[dict[str, int | float]], digits: int = 6) -> bytes:
    """Rows of numbers as CSV, floats at `digits` significant digits (a plot's data)."""
    def cell(value: int | float) -> str:
        return str(value) if isinstance(value, int) else f"{value:.{digits}g}"

    lines = [",".join(rows[0]), *(",".join(cell(v) for v in row.values()) for row in rows)]
    return ("\n".join(lines) + "\n").encode()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=metadata))


def load_tensors(path: Path, expected: dict[str, tuple[int, ...] | int] | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; `expected` maps names to shapes (or to ndim) to check."""
    path = Path(path)
    record_read(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing. Run `dvc pull` (or `dvc repro`) to get it.")
    try:
        tensors = load_safetensors_bytes(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types for truncation
        raise ArtifactError(f"{path}: unreadable safetensors ({exc}); restore it with `dvc checkout --force {path}`") from None
    for name, shape in (expected or {}).items():
        if name not in tensors:
            raise ArtifactError(f"{path}: tensor {name!r} missing; restore it with `dvc checkout --force {path}`")
        actual = tuple(tensors[name].shape)
        if (isinstance(shape, int) and len(actual) != shape) or (isinstance(shape, tuple) and actual != shape):
            raise ArtifactError(f"{path}: tensor {name!r} has shape {actual}, expected {shape}")
    return tensors


def figure_svg(fig: Any) -> bytes:
    """A figure as SVG, cropped to its content, with no date and a fixed id salt: the same
    figure gives the same bytes."""
    import io

    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "arith-mismatch", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    return buffer.getvalue()
