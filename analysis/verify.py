"""`make verify`: recompute the stages of a model in a scratch folder, compare every number
of every output with the results here (committed or pulled), and rebuild the paper from
the recomputed results to list every printed number that changed.

    python -m analysis.verify --model smollm2-135m                  # every stage, each on its own
    python -m analysis.verify --model M --stage heads --stage sae   # only these
    python -m analysis.verify --model M --chained                   # recompute upstream stages too
    python -m analysis.verify --model M --recomputed DIR            # compare with an earlier scratch run

Not a DVC stage: it reads params.yaml's `verify` tolerances and writes nothing here. Each
stage runs exactly as `dvc repro` runs it, with this checkout's code and params.yaml, in
a temporary folder (kept with --keep). By default each stage is recomputed from the
upstream results present here, in a folder of its own, so that each stage's own
reproduction is judged, not its inputs'; with --chained the upstream stages are
recomputed first and each stage reads their recomputed outputs (the whole pipeline from
the model). Compared: each stage's results (.json), tensors (.safetensors), folders and
headline metrics; integers, flags and labels must be equal, reals and tensor elements
agree within params.yaml's tolerances. A trained SAE is another dictionary on another
processor (README, "What reproduces where"): its weights are judged by matching (the
share of the latents here found again in the recomputed SAE by decoder direction, at
least the smallest share between training seeds) and its quality numbers within the
seed-to-seed spread that sae_seeds measured, not element by element. Figures and plot
CSVs are drawn from these numbers and are not compared; the paper's printed numbers are.

Exit status: 0 when everything agrees, 1 when a number is out of tolerance, an output is
missing or a printed number of the paper changed, 2 for bad params, and the stage's own status when a recomputation fails.
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


def compare_json(a: Any, b: Any, where: str, tol: Tolerance, out: Comparison,
                 wider: dict[str, float] | None = None) -> None:
    """Walk two parsed JSON values side by side: reals within `tol`, everything else equal.
    `wider`: path suffix -> an absolute tolerance for the reals there, where it is larger."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.failures.append(Deviation(f"{where}.{key}", a.get(key, "(absent)"), b.get(key, "(absent)")))
            else:
                compare_json(a[key], b[key], f"{where}.{key}", tol, out, wider)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.failures.append(Deviation(f"{where} (length)", len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            compare_json(x, y, f"{where}[{i}]", tol, out, wider)
    elif (isinstance(a, float) or isinstance(b, float)) and _real(a) and _real(b):
        extra = max((v for k, v in (wider or {}).items() if where.endswith(k)), default=0.0)
        out.number(where, float(a), float(b), Tolerance(abs=max(tol.abs, extra), rel=tol.rel) if extra else tol)
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


@dataclass(frozen=True)
class SeedSpread:
    """What sae_seeds measured of a trained SAE: how far retraining moves it."""

    quality: dict[str, float]  # quality number -> largest minus smallest over seeds
    threshold: float  # decoder cosine that finds a latent again
    matched: float  # the smallest share of live latents found again in another seed


def seed_spreads(model: str, here: Path) -> dict[str, SeedSpread]:
    """Per trained SAE, from the sae_seeds results here; empty when there are none."""
    path = here / output_path("sae_seeds", "results", model)
    if not path.is_file():
        return {}
    found = json.loads(path.read_text())["saes"]
    return {name: SeedSpread(r["spread"], r["threshold"], min(run["matched"] for run in r["runs"]))
            for name, r in found.items()}


def compare_dictionaries(committed: Path, recomputed: Path, label: str, spread: SeedSpread, out: Comparison) -> None:
    """A retrained SAE's weights, by matching: the share of the committed SAE's live latents
    with a decoder direction in the recomputed one at cosine >= the threshold must be at
    least the smallest share between training seeds."""
    from safetensors.torch import load_file

    def unit(folder: Path):
        w = load_file(folder / "sae_weights.safetensors")["W_dec"].double()
        return w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    live = load_file(committed / "stats.safetensors")["firing_rate"] > 0
    cosine = (unit(committed)[live] @ unit(recomputed).T).max(-1).values
    share = (cosine >= spread.threshold).double().mean().item()
    out.numbers += 1
    if share < spread.matched:
        out.failures.append(Deviation(f"{label} (latents found again at cosine >= {spread.threshold})", share,
                                      f"at least {spread.matched:.3f}, the smallest share between seeds"))


def compare_file(committed: Path, recomputed: Path, label: str, params: Params, out: Comparison,
                 spreads: dict[str, SeedSpread] | None = None) -> None:
    spreads = spreads or {}
    if not committed.exists():
        out.failures.append(Deviation(label, "(missing: run `dvc pull` or `dvc repro`)", "(present)"))
    elif not recomputed.exists():
        out.failures.append(Deviation(label, "(present)", "(missing)"))
    elif committed.is_dir() and committed.name in spreads and (committed / "sae_weights.safetensors").is_file():
        compare_dictionaries(committed, recomputed, label, spreads[committed.name], out)
        compare_file(committed / "cfg.json", recomputed / "cfg.json", f"{label}/cfg.json", params, out)
    elif committed.is_dir():
        names = sorted({p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
                       | {p.relative_to(recomputed) for p in recomputed.rglob("*") if p.is_file()})
        firsts = {name.parts[0] for name in names if len(name.parts) > 1}
        for name in names:
            if len(name.parts) > 1 and name.parts[0] in spreads:
                continue  # a trained SAE's folder: compared as a whole below
            compare_file(committed / name, recomputed / name, f"{label}/{name}", params, out, spreads)
        for first in sorted(firsts & set(spreads)):
            compare_file(committed / first, recomputed / first, f"{label}/{first}", params, out, spreads)
    elif committed.suffix == ".safetensors":
        compare_tensors(committed, recomputed, label, params.verify.tensors, out)
    elif committed.suffix == ".json":
        wider = {f"{name}.quality.{k}": v for name, spread in spreads.items() for k, v in spread.quality.items()}
        compare_json(json.loads(committed.read_text()), json.loads(recomputed.read_text()), label,
                     params.verify.reals, out, wider)
    else:
        out.exact(label, committed.read_bytes(), recomputed.read_bytes())


def stage_outputs(stage: str, model: str) -> list[str]:
    """A stage's outputs, relative to the repository root: what `verify` compares."""
    return [output_path(stage, kind, model) for kind in stages()[stage].writes] + [metrics_path(stage, model)]


def stage_inputs(stage: str, model: str) -> list[str]:
    """The outputs of other stages that a stage reads, relative to the repository root."""
    return [output_path(*entry.split(":"), model) for entry in stages()[stage].reads]


def compare_stage(stage: str, model: str, here: Path, scratch: Path, params: Params) -> Comparison:
    """A stage's outputs here against the recomputed ones; a trained SAE judged against the
    seed spread (sae_train only: downstream stages read the SAE here, so theirs must agree)."""
    out = Comparison()
    spreads = seed_spreads(model, here) if stage == "sae_train" else {}
    for relative in stage_outputs(stage, model):
        compare_file(here / relative, scratch / relative, relative, params, out, spreads)
    return out


def with_upstream(selected: list[str]) -> list[str]:
    """The selected stages and every stage they read from, in pipeline order."""
    specs, needed = stages(), set(selected)
    for name in reversed(list(specs)):
        if name in needed:
            needed |= {entry.split(":")[0] for entry in specs[name].reads}
    return [name for name in specs if name in needed]


def _run(stage: str, model: str, folder: Path) -> None:
    print(f"verify: recomputing {stage}@{model} in {folder}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", f"analysis.{stage}", "--model", model], cwd=folder)
    if done.returncode != 0:
        print(f"error: {stage}@{model} failed in the scratch folder (status {done.returncode})", file=sys.stderr)
        raise SystemExit(done.returncode)


def recompute(stage_names: list[str], model: str, scratch: Path) -> None:
    """Run each stage as DVC would, with this checkout's code and params, into `scratch`,
    each reading what the ones before it recomputed (--chained)."""
    shutil.copy(REPO / "params.yaml", scratch / "params.yaml")
    for stage in stage_names:
        _run(stage, model, scratch)


def copy_into(relative: str, here: Path, folder: Path) -> None:
    source, target = here / relative, folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    elif source.is_file():
        shutil.copy2(source, target)


def recompute_alone(stage: str, model: str, here: Path, scratch: Path) -> Path:
    """Run one stage in scratch/<stage>, reading the upstream results present here."""
    folder = scratch / stage
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    for relative in stage_inputs(stage, model):
        copy_into(relative, here, folder)
    _run(stage, model, folder)
    return folder


# --- the paper's printed numbers -------------------------------------------------------------

def paper_folder(model: str, here: Path, replaced: dict[str, Path], folder: Path) -> Path:
    """folder/data laid out as here, with every file the paper reads: from `replaced[stage]`
    for the recomputed stages, from here for the rest; and a dvc.lock recording their MD5s."""
    from analysis.pipeline import file_md5, paper_reads

    lock = {}
    for relative in paper_reads(model):
        stage = next((name for name in replaced if relative in stage_outputs(name, model)), None)
        copy_into(relative, replaced[stage] if stage else here, folder)
        if (folder / relative).is_file():
            lock[relative] = file_md5(folder / relative)
    outs = [{"path": path, "md5": md5} for path, md5 in lock.items()]
    (folder / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": {"verify": {"outs": outs}}}))
    return folder / "data"


def printed_numbers(html: str) -> list[tuple[str, str]]:
    """Every number of the paper's text (numbercheck's reading) with the words before it."""
    from analysis.numbercheck import NUMBER, paper_text

    text = " ".join(paper_text(html).split())

    def before(start: int) -> str:
        words = text[max(0, start - 60): start]
        return (words.split(" ", 1)[-1] if start > 60 else words).strip()

    return [(m.group(0), before(m.start())) for m in NUMBER.finditer(text)]


def changed_numbers(before: str, after: str) -> list[str]:
    """The printed numbers that differ between two builds of the paper, each with its context."""
    import difflib

    a, b = printed_numbers(before), printed_numbers(after)
    matcher = difflib.SequenceMatcher(a=[n for n, _ in a], b=[n for n, _ in b], autojunk=False)
    changes = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        here = " ".join(n for n, _ in a[i1:i2]) or "(none)"
        there = " ".join(n for n, _ in b[j1:j2]) or "(none)"
        context = a[i1][1] if i1 < len(a) else (b[j1][1] if j1 < len(b) else "")
        changes.append(f"…{context} {here} here, {there} recomputed")
    return changes


def paper_changes(model: str, here: Path, replaced: dict[str, Path], scratch: Path) -> list[str]:
    """Build the paper from the results here and from the recomputed ones; what changed."""
    from analysis import paper

    htmls = []
    for name, swap in (("here", {}), ("recomputed", replaced)):
        data = paper_folder(model, here, swap, scratch / "paper" / name)
        html, _ = paper.build(model, out_dir=scratch / "paper" / name / "out", data_dir=data)
        htmls.append(html.read_text())
    return changed_numbers(*htmls)


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
    parser.add_argument("--chained", action="store_true",
                        help="recompute the stages these read too, and let them read the recomputed outputs")
    parser.add_argument("--recomputed", type=Path, help="compare with this earlier scratch folder; recompute nothing")
    parser.add_argument("--no-paper", action="store_true", help="skip rebuilding the paper from the recomputed results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args(argv)
    with exit_on_params_error():
        params = load_params()
        params.model(args.model)
    selected = [name for name in stages() if name in (args.stage or stages())]
    scratch = args.recomputed or Path(tempfile.mkdtemp(prefix="arith-verify-"))
    here = Path.cwd()
    try:
        if args.recomputed is None and args.chained:
            recompute(with_upstream(selected), args.model, scratch)
        chained = args.chained or (args.recomputed is not None and not (scratch / selected[0]).is_dir())
        folders = {s: scratch if chained else (scratch / s if args.recomputed else recompute_alone(s, args.model, here, scratch))
                   for s in selected}
        status = report({s: compare_stage(s, args.model, here, folders[s], params) for s in selected})
        if not args.no_paper:
            changes = paper_changes(args.model, here, folders, scratch)
            plural = "" if len(changes) == 1 else "s"
            print(f"paper: {len(changes)} printed number{plural} changed"
                  + (":" if changes else " (rebuilt from the recomputed results)"))
            for change in changes:
                print(f"  {change}")
            status = max(status, 1 if changes else 0)
    finally:
        if args.recomputed is None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif args.keep:
            print(f"verify: the recomputed outputs are in {scratch}", file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
