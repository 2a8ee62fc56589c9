"""`make verify`: recompute every stage of a model in a scratch folder and compare every
number of every output with the results here (committed or pulled).

    python -m analysis.verify --model smollm2-135m                  # recompute, then compare
    python -m analysis.verify --model M --stage heads --stage sae   # only these (and what they read)
    python -m analysis.verify --model M --recomputed DIR            # compare with an earlier scratch run

Not a DVC stage: it reads params.yaml's `verify` tolerances and writes nothing here. The
stages run exactly as `dvc repro` runs them, with this checkout's code and params.yaml,
in a temporary folder (kept with --keep). Compared: each stage's results (.json), tensors
(.safetensors), folders (the trained SAEs) and headline metrics; integers, flags and
labels must be equal, reals and tensor elements agree within params.yaml's tolerances.
Figures and plot CSVs are drawn from these numbers and are not compared.

Exit status: 0 when everything agrees, 1 when a number is out of tolerance or an output
is missing, 2 for bad params, and the stage's own status when a recomputation fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.params import Params, Tolerance, exit_on_params_error, load_params, metrics_path, output_path, stages

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Deviation:
    where: str  # file and path inside it
    committed: Any
    recomputed: Any
    delta: float | None = None  # absolute difference, for numbers
    allowed: float | None = None

    def __str__(self) -> str:
        if self.delta is None:
            return f"{self.where}: {self.committed!r} here, {self.recomputed!r} recomputed"
        return (f"{self.where}: {self.committed!r} here, {self.recomputed!r} recomputed "
                f"(|difference| {self.delta:.3g} > allowed {self.allowed:.3g})")


@dataclass
class Comparison:
    """What comparing one stage's outputs found."""

    numbers: int = 0
    largest: tuple[float, str] = (0.0, "")  # (absolute deviation, where)
    failures: list[Deviation] = field(default_factory=list)

    def number(self, where: str, a: float, b: float, tol: Tolerance) -> None:
        self.numbers += 1
        delta = abs(a - b)
        if delta > self.largest[0]:
            self.largest = (delta, where)
        allowed = tol.abs + tol.rel * max(abs(a), abs(b))
        if not delta <= allowed:  # NaN fails too
            self.failures.append(Deviation(where, a, b, delta, allowed))

    def exact(self, where: str, a: Any, b: Any) -> None:
        self.numbers += 1
        if a != b:
            self.failures.append(Deviation(where, a, b))


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare_json(a: Any, b: Any, where: str, tol: Tolerance, out: Comparison) -> None:
    """Walk two parsed JSON values side by side: reals within `tol`, everything else equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.failures.append(Deviation(f"{where}.{key}", a.get(key, "(absent)"), b.get(key, "(absent)")))
            else:
                compare_json(a[key], b[key], f"{where}.{key}", tol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.failures.append(Deviation(f"{where} (length)", len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            compare_json(x, y, f"{where}[{i}]", tol, out)
    elif (isinstance(a, float) or isinstance(b, float)) and _real(a) and _real(b):
        out.number(where, float(a), float(b), tol)
    else:
        out.exact(where, a, b)


def compare_tensors(a_path: Path, b_path: Path, label: str, tol: Tolerance, out: Comparison) -> None:
    """Every tensor of two safetensors files: same names, shapes and dtypes; floating-point
    elements within `tol`, others equal."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    for name in sorted(set(a) | set(b)):
        where = f"{label}:{name}"
        if name not in a or name not in b or a[name].shape != b[name].shape or a[name].dtype != b[name].dtype:
            describe = lambda t: "(absent)" if t is None else f"{t.dtype} {tuple(t.shape)}"  # noqa: E731
            out.failures.append(Deviation(where, describe(a.get(name)), describe(b.get(name))))
            continue
        x, y = a[name], b[name]
        out.numbers += x.numel()
        if not x.is_floating_point():
            if not torch.equal(x, y):
                i = int((x != y).flatten().nonzero()[0])
                out.failures.append(Deviation(f"{where}[flat {i}]", x.flatten()[i].item(), y.flatten()[i].item()))
            continue
        x, y = x.double(), y.double()
        delta = (x - y).abs()
        allowed = tol.abs + tol.rel * torch.maximum(x.abs(), y.abs())
        if delta.numel() and delta.max().item() > out.largest[0]:
            out.largest = (delta.max().item(), where)
        bad = (~(delta <= allowed)).flatten().nonzero().flatten()
        if len(bad):
            i = int(bad[delta.flatten()[bad].argmax()]) if not delta.isnan().any() else int(bad[0])
            out.failures.append(Deviation(f"{where}[flat {i}] (worst of {len(bad)} elements out of tolerance)",
                                          x.flatten()[i].item(), y.flatten()[i].item(),
                                          delta.flatten()[i].item(), allowed.flatten()[i].item()))


def compare_file(committed: Path, recomputed: Path, label: str, params: Params, out: Comparison) -> None:
    if not committed.exists():
        out.failures.append(Deviation(label, "(missing: run `dvc pull` or `dvc repro`)", "(present)"))
    elif not recomputed.exists():
        out.failures.append(Deviation(label, "(present)", "(missing)"))
    elif committed.is_dir():
        names = sorted({p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
                       | {p.relative_to(recomputed) for p in recomputed.rglob("*") if p.is_file()})
        for name in names:
            compare_file(committed / name, recomputed / name, f"{label}/{name}", params, out)
    elif committed.suffix == ".safetensors":
        compare_tensors(committed, recomputed, label, params.verify.tensors, out)
    elif committed.suffix == ".json":
        compare_json(json.loads(committed.read_text()), json.loads(recomputed.read_text()), label,
                     params.verify.reals, out)
    else:
        out.exact(label, committed.read_bytes(), recomputed.read_bytes())


def stage_outputs(stage: str, model: str) -> list[str]:
    """A stage's outputs, relative to the repository root: what `verify` compares."""
    return [output_path(stage, kind, model) for kind in stages()[stage].writes] + [metrics_path(stage, model)]


def compare_stage(stage: str, model: str, here: Path, scratch: Path, params: Params) -> Comparison:
    out = Comparison()
    for relative in stage_outputs(stage, model):
        compare_file(here / relative, scratch / relative, relative, params, out)
    return out


def with_upstream(selected: list[str]) -> list[str]:
    """The selected stages and every stage they read from, in pipeline order."""
    specs, needed = stages(), set(selected)
    for name in reversed(list(specs)):
        if name in needed:
            needed |= {entry.split(":")[0] for entry in specs[name].reads}
    return [name for name in specs if name in needed]


def recompute(stage_names: list[str], model: str, scratch: Path) -> None:
    """Run each stage as DVC would, with this checkout's code and params, into `scratch`."""
    shutil.copy(REPO / "params.yaml", scratch / "params.yaml")
    for stage in stage_names:
        print(f"verify: recomputing {stage}@{model} in {scratch}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", f"analysis.{stage}", "--model", model], cwd=scratch)
        if done.returncode != 0:
            print(f"error: {stage}@{model} failed in the scratch folder (status {done.returncode})", file=sys.stderr)
            raise SystemExit(done.returncode)


def report(results: dict[str, Comparison]) -> int:
    """Print one line per stage and each deviation out of tolerance; the exit status."""
    failures = 0
    for stage, out in results.items():
        delta, where = out.largest
        largest = f"largest deviation {delta:.3g} ({where})" if where else "largest deviation 0"
        verdict = "ok" if not out.failures else f"{len(out.failures)} out of tolerance"
        print(f"{stage}: {out.numbers:,} numbers compared, {largest}: {verdict}")
        for deviation in out.failures[:20]:
            print(f"  {deviation}")
        if len(out.failures) > 20:
            print(f"  ... and {len(out.failures) - 20} more")
        failures += len(out.failures)
    total = sum(out.numbers for out in results.values())
    print(f"verify: {total:,} numbers in {len(results)} stages; "
          + ("all within tolerance" if not failures else f"{failures} out of tolerance"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model key from params.yaml")
    parser.add_argument("--stage", action="append", choices=list(stages()), help="only these stages (repeatable)")
    parser.add_argument("--recomputed", type=Path, help="compare with this earlier scratch folder; recompute nothing")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args(argv)
    with exit_on_params_error():
        params = load_params()
        params.model(args.model)
    selected = args.stage or list(stages())
    scratch = args.recomputed or Path(tempfile.mkdtemp(prefix="arith-verify-"))
    try:
        if args.recomputed is None:
            recompute(with_upstream(selected), args.model, scratch)
        status = report({s: compare_stage(s, args.model, Path.cwd(), scratch, params) for s in selected})
    finally:
        if args.recomputed is None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif args.keep:
            print(f"verify: the recomputed outputs are in {scratch}", file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
