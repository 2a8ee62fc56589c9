"""What every stage's main() does: parse --model, validate params, seed, load the model,
run (counting forward passes and tokens, recorded as the results' `work`), write the
headline metrics and plot data, print one closing line with the wall time and the work,
log both to logs/<model>/<stage>.json, then check that the stage read exactly the other
stages' outputs it declares.

Exit status: 2 for bad params or arguments (nothing written), 3 when the model cannot be
had here (nothing written; the message says what to do instead), 5 when the stage read
results that its StageSpec does not declare, or declares some it never read, 7 when an
output folder cannot be written or its disk lacks the room (found before any compute;
nothing written), 130 when interrupted (Ctrl-C: one line; every output is the old one or
the new one, never a part, since each is replaced only when complete).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.artifacts import StagePaths, WorkDone, atomic_write_bytes, headline, reads, save_json, to_csv_bytes
from analysis.models import ModelUnavailableError, check_hub_cache, load_model
from analysis.params import OUTPUTS, output_path, parse_model_arg, stages
from analysis.pipeline import declared_reads, undeclared_reads
from analysis.timing import Work, counting


def check_numerics() -> None:
    """With the AVX2 pin asked for (ARITH_PIN_AVX2=1), warn when it is not in force."""
    if os.environ.get("ARITH_PIN_AVX2") == "1" and torch.backends.cpu.get_cpu_capability() != "AVX2":
        print(f"warning: PyTorch runs its {torch.backends.cpu.get_cpu_capability()} kernels, not the pinned AVX2 "
              "ones (no AVX2 here, or torch ran before `analysis` was imported): results' last bits may differ "
              "from other machines'", file=sys.stderr)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def check_reads(stage: str, key: str, paths: StagePaths) -> None:
    """Fail (exit 5) unless the stage read exactly the outputs its StageSpec declares."""
    declared = declared_reads(stage, stages()[stage], key)
    own = [output_path(stage, kind, key) for kind in OUTPUTS]
    missing, unused = undeclared_reads(reads(), declared, own, root=paths.root.resolve().parent)
    if missing or unused:
        print(f"error: stage {stage} read {missing or 'nothing undeclared'} not declared in its StageSpec, and "
              f"declares {unused or 'nothing'} it never read; fix `reads` of its section in analysis/params.py",
              file=sys.stderr)
        raise SystemExit(5)


MIN_FREE = 64 << 20  # bytes free beside the outputs before a stage computes: each result is written
# to a temporary file first, so the room needed is that of the outputs it replaces, at least this


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def check_writable(paths: StagePaths) -> None:
    """Fail (exit 7) before any compute if an output's folder cannot be made or written, or
    its disk has less room than the outputs it will replace (at least MIN_FREE); creates
    nothing (a probe file in the nearest existing folder is removed at once)."""
    need = max(MIN_FREE, 2 * sum(_size(p) for p in (paths.results, paths.tensors, paths.dir, paths.metrics)))
    for folder in {paths.results.parent, paths.metrics.parent}:
        existing = next(p for p in [folder, *folder.parents] if p.exists() or p == Path("."))
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a folder")
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check.", suffix=".tmp"):
                pass
            free = shutil.disk_usage(existing).free
        except OSError as exc:
            print(f"error: stage {paths.stage} cannot write its outputs in {folder} ({exc.strerror or exc}); "
                  "nothing was computed or changed", file=sys.stderr)
            raise SystemExit(7) from None
        if free < need:
            print(f"error: stage {paths.stage}: {folder} has {free / 2**20:,.0f} MiB free, and its outputs need "
                  f"{need / 2**20:,.0f} MiB; free some room. Nothing was computed or changed", file=sys.stderr)
            raise SystemExit(7)


def write_log(paths: StagePaths, load_s: float, run_s: float, work: Work) -> None:
    """This run's timings and work in logs/ (see StagePaths.log); `make bench` reads them."""
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths.log, json.dumps({
        "stage": paths.stage, "model": paths.model, "load_s": round(load_s, 2), "run_s": round(run_s, 2),
        **asdict(work), "threads": torch.get_num_threads(), "device": str(torch.get_default_device()),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }, indent=1).encode() + b"\n")


def run_stage(stage: str, run: Callable[..., Any], headline_patterns: tuple[str, ...],
              argv: list[str] | None = None, curves: Callable[[Any], dict[str, list[dict]]] | None = None) -> None:
    """main() of a stage whose run(model, params, key, paths) needs the model and returns
    its results; the results' numbers that match `headline_patterns` become its metrics,
    and curves(results) the data of its StageSpec's plots."""
    key, params = parse_model_arg(stage, argv)
    try:
        _run_stage(stage, key, params, run, headline_patterns, curves)
    except KeyboardInterrupt:
        print(f"interrupted: {stage}@{key} stopped; each of its outputs is the old file or the new one, never a "
              "part of one", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {stage}@{key}: the disk filled while writing ({exc.filename or 'an output'}); the outputs "
              "written so far are whole, the rest are the old ones. Free some room and run it again",
              file=sys.stderr)
        raise SystemExit(7) from None


def _run_stage(stage: str, key: str, params, run: Callable[..., Any], headline_patterns: tuple[str, ...],
               curves: Callable[[Any], dict[str, list[dict]]] | None) -> None:
    check_writable(StagePaths(key, stage))
    check_numerics()
    seed_everything(params.seed)
    try:
        check_hub_cache(key, params.model(key), with_saes=stages()[stage].uses_saes)
        start = time.perf_counter()
        model = load_model(key, params)
        load_s = time.perf_counter() - start
        print(f"  {stage}: model loaded: {load_s:.1f} s", file=sys.stderr, flush=True)
        paths = StagePaths(key, stage)
        start = time.perf_counter()
        with counting(model) as work:
            results = run(model, params, key, paths)
        wall = time.perf_counter() - start
    except ModelUnavailableError as exc:  # the model, or an SAE it needs, cannot be had here
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    results = results.model_copy(update={"work": WorkDone(**asdict(work))})
    save_json(paths.results, results)
    save_json(paths.metrics, headline(results, (*headline_patterns, "work.*")))
    for name, rows in (curves(results) if curves else {}).items():
        atomic_write_bytes(paths.plot(name), to_csv_bytes(rows))
    print(f"{stage}@{key}: {wall:.1f} s, {work.forward_passes:,} forward passes, {work.tokens:,} tokens",
          file=sys.stderr, flush=True)
    write_log(paths, load_s, wall, work)
    check_reads(stage, key, paths)
