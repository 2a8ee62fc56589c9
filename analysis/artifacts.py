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
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale_temporaries(target: Path) -> list[Path]:
    """Temporary files or folders beside `target` left by writers that were killed: named
    .<name>.<pid>.<random>.tmp, with no process of that pid left (or this process's own, from
    a write that failed: one process writes an output once at a time). Another live
    process's temporary is not stale, so two writers of one output never delete each other's."""
    stale = []
    for candidate in target.parent.glob(f".{target.name}.*.tmp"):
        pid = candidate.name[len(target.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            stale.append(candidate)
    return stale


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_temporaries(path):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
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
    for stale in _stale_temporaries(target):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp"))
    try:
        write(tmp)
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers make owner-only modes
            path.chmod((0o777 if path.is_dir() else 0o666) & ~_UMASK)
        if target.exists():  # renamed aside, not deleted in place: a kill leaves the old folder or none
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp"))
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


Prob = Annotated[float, Field(ge=0, le=1)]  # a probability, a rate or an attention weight
# Strings that name things rather than quote text: a field of one of these types takes no
# markup, so the paper can use it as a key or a label. Free text (prompts, tokens,
# descriptions) stays `str` and reaches the paper escaped (analysis/report.py).
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]  # a model key, an SAE or set name
Hook = Annotated[str, Field(pattern=r"^blocks\.\d{1,3}\.[a-z_.]{1,40}$")]  # a TransformerLens hook point
Answer = Annotated[str, Field(pattern=r"^ ?[0-9]{1,8}$")]  # an answer string, " 10"
HubId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$")]  # a release, id or Neuronpedia id
Level = Annotated[float, Field(gt=0, lt=1)]  # an interval's confidence level


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


# Bounds on what a results file may hold, whatever its schema: whoever can write to the DVC
# remote writes these files, so a reader takes them as untrusted input (README, "What
# happens when"). Every stage writes far less.
MAX_RESULTS_BYTES = 64 << 20
MAX_DEPTH = 16  # nesting of objects and lists; the deepest results file needs six
MAX_STRING = 2_000  # characters; the longest string a stage writes is a prompt of about 100
MAX_ITEMS = 200_000  # entries of one list or object
MAX_MAGNITUDE = 1e12  # |number|: logits, counts and token totals are far below this
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+ -]{0,63}")  # "copy", "res-l22", "5 + 5", "1076"


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key[:80]!r} appears twice in one object")
        seen[key] = value
    return seen


def _bad_value(value: Any, where: str, depth: int = 0) -> str | None:
    """What is wrong with a parsed JSON value, as 'field: why', or None (walks it once)."""
    here = where or "(top level)"
    if depth > MAX_DEPTH:
        return f"{here}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{here}: not a finite number (NaN or infinity); no stage writes one"
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_MAGNITUDE:
        return f"{here}: {value:.3g} is beyond any value a stage writes (|x| <= {MAX_MAGNITUDE:g})"
    if isinstance(value, str) and len(value) > MAX_STRING:
        return f"{here}: a string of {len(value):,} characters (at most {MAX_STRING:,})"
    if isinstance(value, dict | list) and len(value) > MAX_ITEMS:
        return f"{here}: {len(value):,} entries (at most {MAX_ITEMS:,})"
    if isinstance(value, dict):
        for key, item in value.items():
            if not KEY.fullmatch(key):
                return f"{here}: the key {key[:40]!r} is not a name a stage writes ({KEY.pattern})"
            found = _bad_value(item, f"{where}.{key}" if where else key, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_value(item, f"{where}[{i}]", depth + 1)
            if found:
                return found
    return None


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


def _refused(path: Path, why: str) -> ArtifactError:
    return ArtifactError(f"{path}: {why}. Restore it with `dvc checkout --force {path}` or rebuild it with "
                         "`dvc repro`.")


def read_results(path: Path) -> Any:
    """A results file's parsed JSON, refused (ArtifactError naming the file and the field)
    when it is too large, not JSON, has a key twice, or holds a value beyond the bounds above."""
    path = Path(path)
    record_read(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing. Run `dvc pull` (or `dvc repro`) to get it.")
    size = path.stat().st_size
    if size > MAX_RESULTS_BYTES:
        raise _refused(path, f"{size:,} bytes, more than any stage writes ({MAX_RESULTS_BYTES:,})")
    try:
        raw = json.loads(path.read_bytes(), object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); restore it with `dvc checkout --force {path}`") from None
    except UnicodeDecodeError as exc:
        raise _refused(path, f"not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise _refused(path, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # a duplicated key, or an integer of more than 4,300 digits
        raise _refused(path, str(exc)) from None
    problem = _bad_value(raw, "")
    if problem:
        raise _refused(path, problem)
    return raw


def load_json(path: Path, schema: type[M]) -> M:
    """Read a results file and check it against its schema, strictly: an integer field
    takes no float, a field takes no value of another type."""
    raw = read_results(path)
    try:
        return schema.model_validate(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise _refused(Path(path), f"does not match the {schema.__name__} schema at {field}: {first['msg']}") from None


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
