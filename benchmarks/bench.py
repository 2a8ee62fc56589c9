"""`make bench`: how close to the machine's limit the pipeline runs, how much faster than
the notebook way, and what each stage costs; every ratio from measurements of this one run.

    python benchmarks/bench.py [--model smollm2-135m] [--scales 1 2 4] [--skip setup scaling ...]

Figures (each with its target, and whether this run met it):
- limit: dense float32 matmul throughput (FLOP/s), measured first, with the numerics the
  stages use (pinned, analysis/__init__.py; `--native` for this processor's own paths);
- forward: the stages' batched forward (equal-length prompts, batches of 64, logits at the
  last position) over the prompt family, in tokens/s and as a fraction of the limit;
- notebook: the same prompts one at a time, run_with_cache of every hook, logits at every
  position, against the batched way; both give the same probabilities;
- heads: attribution patching plus exact patching of its top ten, against exact patching of
  every head, on the copy error set; how many of the exact top ten it finds;
- controls: a random control's draws with the batch's prefix shared by every draw, against
  TransformerLens' own past_kv_cache, which copies it into every draw;
- scaling: each stage's run at each scale of its workload (prompts, contexts, pairs, windows);
- pipeline: each stage's load and run in the last `make` (logs/), their total against the
  floor (its tokens × the blocks' FLOPs per token ÷ the limit), a no-op `make`, the paper
  rebuilt from cache, the bundled model's load, and set-up from empty caches (pip and uv).

Writes benchmarks/results.json and prints a Markdown table (the README's).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import analysis  # noqa: E402, F401  (pins the numeric code paths before torch loads)

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

STAGES = ("logit_lens", "heads", "behaviour", "sae_train", "sae", "patching", "sae_seeds")  # pipeline order
# The params that set each stage's workload; a scale multiplies every one of them.
WORKLOAD = {
    "logit_lens": ("family.n_prompts",),
    "heads": ("family.n_prompts", "heads.induction.n_sequences"),
    "behaviour": ("behaviour.n_contexts",),
    "sae_train": ("sae_train.corpus.prose_windows", "sae_train.corpus.arithmetic_windows"),
    "sae": ("family.n_prompts",),
    "patching": ("patching.n_pairs", "patching.min_erring", "patching.max_erring", "patching.max_pairs"),
    "sae_seeds": ("sae_train.corpus.prose_windows", "sae_train.corpus.arithmetic_windows"),
}


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None  # None: no target, or not measured
    note: str = ""


@dataclass
class Report:
    machine: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float | None, unit: str, target: str = "",
            check: Callable[[float], bool] | None = None, note: str = "") -> None:
        met = None if value is None or check is None else bool(check(value))
        self.figures.append(Figure(name, value, unit, target, met, note))
        shown = "—" if value is None else f"{value:,.3g}"
        verdict = {True: "met", False: "MISSED", None: ""}[met]
        print(f"{name}: {shown} {unit}  {target} {verdict}  {note}".rstrip(), flush=True)


# --- FLOPs -----------------------------------------------------------------------------

def block_flops_per_token(cfg) -> int:
    """Multiply-adds ×2 of one token through every block's weight matrices (no attention
    scores, no unembedding): the FLOPs no implementation can avoid."""
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    attn = cfg.d_model * cfg.d_head * (2 * cfg.n_heads + 2 * n_kv)  # q, o; k, v
    mlp = cfg.d_model * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    return 2 * cfg.n_layers * (attn + mlp)


def forward_flops(cfg, lengths: list[int], unembedded: int) -> int:
    """FLOPs of forward passes over sequences of `lengths` (causal attention included), with
    `unembedded` positions put through the unembedding."""
    scores = sum(4 * cfg.n_layers * cfg.n_heads * cfg.d_head * n * (n + 1) // 2 for n in lengths)
    return block_flops_per_token(cfg) * sum(lengths) + scores + 2 * cfg.d_model * cfg.d_vocab * unembedded


# --- measurements ----------------------------------------------------------------------

def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_limit(n: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of an n×n by n×n float32 product, best of `repeats`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats)


def batched_probs(model, prepared) -> torch.Tensor:
    from analysis.scoring import first_token_probs

    return first_token_probs(model, prepared, ("correct", "copy"))


@torch.no_grad()
def notebook_probs(model, prepared) -> torch.Tensor:
    """The notebook way: each prompt alone, every hook cached, logits at every position."""
    rows = []
    for p in prepared:
        logits, _cache = model.run_with_cache(p.tokens[None].to(model.cfg.device))
        ids = [p.answers[n].first_token_id for n in ("correct", "copy")]
        rows.append(logits[0, -1].softmax(-1)[ids].cpu())
    return torch.stack(rows)


def forward_and_notebook(report: Report, model, params, limit: float) -> None:
    from analysis.prompts import prepare_family

    _, prepared = prepare_family(model, params.family)
    lengths = [len(p.tokens) for p in prepared]
    batched = best_seconds(lambda: batched_probs(model, prepared), 3)
    flops = forward_flops(model.cfg, lengths, unembedded=len(prepared))
    report.add("forward: batched, tokens/s", sum(lengths) / batched, "tokens/s",
               note=f"{len(prepared)} family prompts of {min(lengths)}-{max(lengths)} tokens, batches of 64")
    report.add("forward: fraction of the limit", flops / batched / limit, "", "≥ 0.7", lambda v: v >= 0.7)
    notebook = best_seconds(lambda: notebook_probs(model, prepared), 1)
    same = (notebook_probs(model, prepared) - batched_probs(model, prepared)).abs().max().item()
    report.add("notebook way ÷ batched (time)", notebook / batched, "×", "≥ 3", lambda v: v >= 3,
               note=f"same probabilities within {same:.1g}")
    report.details["forward"] = {"prompts": len(prepared), "tokens": sum(lengths), "flops": flops,
                                 "batched_s": batched, "notebook_s": notebook, "max_prob_difference": same}


def head_ranking(report: Report, model, params, top: int = 10) -> None:
    """Attribution patching + exact patching of its top `top` against exact patching of
    every head, on the first causal set's first n_pairs pairs."""
    from analysis import causal
    from analysis.errorsets import batches, pairs_of, prepare_pairs

    name = params.patching.causal[0]
    items = prepare_pairs(model, pairs_of(params.patching.sets[name], params.patching.n_pairs, params, torch.zeros(1, 1)))
    chosen = list(range(len(items)))
    runs = [causal.prepare_runs(model, batch) for _, batch in batches(items)]
    ld_corrupt = torch.cat([r.base["corrupt"].ld[0] for r in runs])
    n_heads = model.cfg.n_heads
    every = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(n_heads)]

    def exact(heads: list[tuple[int, int]]) -> torch.Tensor:  # (pair, head): LD, clean head into corrupt run
        return torch.cat([causal.compute_component_patching(model, r, heads)[0] for r in runs])

    start = time.perf_counter()
    effect = (exact(every) - ld_corrupt[:, None]).mean(0)
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    attribution = torch.cat([causal.compute_attribution(model, r).heads for r in runs]).mean(0).flatten()
    ranked = [every[int(i)] for i in attribution.abs().argsort(descending=True)[:top]]
    exact(ranked)  # the confirmation the stage reports
    attribution_s = time.perf_counter() - start
    exact_top = {every[int(i)] for i in effect.abs().argsort(descending=True)[:top]}
    found = len(exact_top & set(ranked))
    report.add(f"heads: exact every head ÷ attribution + exact top {top} (time)", exact_s / attribution_s, "×",
               "≥ 20", lambda v: v >= 20, note=f"{len(every)} heads, {len(chosen)} pairs")
    report.add(f"heads: of the exact top {top}, found by attribution", found, f"of {top}", "≥ 8", lambda v: v >= 8)
    report.details["heads"] = {"exact_s": exact_s, "attribution_s": attribution_s, "pairs": len(chosen),
                               "exact_top": sorted(exact_top), "attribution_top": ranked}


def controls(report: Report, model, params, draws: int = 50) -> None:
    """A random control's draws as the patching stage runs them (copies of the batch sharing
    its frozen prefix, analysis/prefix_attention.py) against TransformerLens' own
    past_kv_cache (every copy holding the prefix), `draws` layer-matched head sets from the
    middle layer on, as many at a time as make draw_rows rows, on the first causal set's first pairs."""
    from analysis import causal
    from analysis.errorsets import batches, pairs_of, prepare_pairs

    s = params.patching
    items = prepare_pairs(model, pairs_of(s.sets[s.causal[0]], s.n_pairs, params, torch.zeros(1, 1)))
    runs = causal.prepare_runs(model, batches(items)[0][1])
    values = causal.mean_head_outputs(model, runs)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    sets = causal.layer_matched_sets([(n_layers // 2, 0), (n_layers - 1, 0)], n_heads, draws, params.seed)
    masks = torch.stack([causal.head_mask(n_layers, n_heads, heads) for heads in sets])

    per = causal.copies_per_run(runs, s.draw_rows)

    def run(shared: bool) -> torch.Tensor:
        return torch.cat([causal.ablate_heads(model, runs, masks[i: i + per], values, shared=shared).ld
                          for i in range(0, draws, per)])

    shared_s, own_s = best_seconds(lambda: run(True), 2), best_seconds(lambda: run(False), 1)
    difference = (run(True) - run(False)).abs().max().item()
    report.add(f"controls: TransformerLens' cache ÷ shared prefix (time, {draws} draws)", own_s / shared_s, "×", "≥ 3",
               lambda v: v >= 3, note=f"{runs.n} pairs, {per} draws a run; LD differs by at most {difference:.1g}")
    report.details["controls"] = {"draws": draws, "pairs": runs.n, "draws_per_run": per, "shared_s": shared_s,
                                  "transformer_lens_s": own_s, "max_ld_difference": difference}


def scaled_params(raw: dict, stage: str, scale: float):
    from analysis.params import validate_params

    raw = json.loads(json.dumps(raw))
    for dotted in WORKLOAD[stage]:
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = max(1, round(node[last] * scale))
    return validate_params(raw)


def scaling(report: Report, model, raw: dict, key: str, scales: list[float]) -> None:
    """Each stage's run() at each scale of its workload, in a scratch folder (the stages
    that read sae_train's outputs read this checkout's)."""
    from analysis.artifacts import StagePaths
    from analysis.params import ParamsError
    from analysis.timing import counting

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / key).mkdir(parents=True)
        for item in (REPO / "data" / key).glob("sae_train*"):
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, root / key / item.name)
        for stage in STAGES:
            module, row = importlib.import_module(f"analysis.{stage}"), {}
            for scale in scales:
                try:
                    params = scaled_params(raw, stage, scale)
                except ParamsError as exc:
                    row[scale] = {"error": str(exc)}
                    continue
                start = time.perf_counter()
                with counting(model) as work:
                    module.run(model, params, key, StagePaths(key, stage, root=root))
                row[scale] = {"run_s": time.perf_counter() - start, **asdict(work)}
            base = row[scales[0]].get("run_s")
            times = ", ".join(f"{s:g}×: {r['run_s']:.1f} s" if "run_s" in r else f"{s:g}×: {r['error']}"
                              for s, r in row.items())
            last = row[scales[-1]].get("run_s")
            growth = None if base is None or last is None else last / base
            report.add(f"scaling: {stage}, {scales[-1]:g}× ÷ {scales[0]:g}× (time)", growth, "×",
                       note=f"{times} ({', '.join(WORKLOAD[stage])})")
            report.details.setdefault("scaling", {})[stage] = {str(s): r for s, r in row.items()}


def pipeline(report: Report, model, key: str, limit: float) -> None:
    """The last `make`'s stages, from logs/ (written by each stage's main())."""
    logs = {s: json.loads(p.read_text()) for s in STAGES if (p := REPO / "logs" / key / f"{s}.json").exists()}
    if len(logs) < len(STAGES):
        report.add("pipeline: stages, load + run", None, "s", "≤ 900", note="run `make` first: logs/ lacks "
                   + ", ".join(s for s in STAGES if s not in logs))
        return
    total = sum(log["load_s"] + log["run_s"] for log in logs.values())
    tokens = sum(log["tokens"] for log in logs.values())
    floor = tokens * block_flops_per_token(model.cfg) / limit
    report.add("pipeline: stages, load + run (last make)", total, "s", "≤ 900", lambda v: v <= 900,
               note="; ".join(f"{s} {log['load_s']:.0f}+{log['run_s']:.0f}" for s, log in logs.items()))
    report.add("pipeline: its floor (tokens × block FLOPs ÷ limit)", floor, "s",
               note=f"{tokens:,} tokens; total ÷ floor {total / floor:.0f}×")
    report.details["pipeline"] = {"logs": logs, "tokens": tokens, "floor_s": floor}


def command_seconds(args: list[str], env: dict | None = None, cwd: Path = REPO) -> tuple[float, int, str]:
    """Wall time, exit status and output tail of a command run with this venv first on PATH
    (DVC's stage commands say `python`)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, (done.stdout + done.stderr)[-400:]


def make_figures(report: Report, key: str) -> None:
    dvc = str(Path(sys.executable).with_name("dvc"))  # this venv's, whether or not it is on PATH
    status = subprocess.run([dvc, "status", "--json", f"paper@{key}"], cwd=REPO, capture_output=True, text=True)
    if status.returncode or json.loads(status.stdout or "{}"):
        report.add("no-op make", None, "s", "≤ 2", note="the pipeline is not up to date: run `make` first")
        return
    runs = [command_seconds(["make", f"MODEL={key}"]) for _ in range(4)]  # the first may still ask DVC
    failed = next((tail for _, rc, tail in runs if rc), "")
    report.add("no-op make (best of 3, after one)", None if failed else min(s for s, _, _ in runs[1:]), "s", "≤ 2",
               lambda v: v <= 2, note=failed or f"the first: {runs[0][0]:.2f} s")
    seconds, rc, tail = command_seconds([dvc, "repro", "--force", "--single-item", f"paper@{key}"])
    report.add("paper rebuilt from cache", seconds if rc == 0 else None, "s", "≤ 30", lambda v: v <= 30,
               note=tail if rc else "")


def setup_figures(report: Report) -> None:
    """`make setup` in a scratch copy of the Makefile and lock, caches empty, with each installer."""
    for installer in ("pip", "uv"):
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("Makefile", "requirements.lock"):
                shutil.copy2(REPO / name, tmp)
            env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "UV_CACHE_DIR": f"{tmp}/uv-cache"}
            env.pop("VIRTUAL_ENV", None)
            seconds, rc, tail = command_seconds(["make", "setup", f"INSTALLER={installer}"], env, Path(tmp))
            report.add(f"set-up, {installer}, empty caches", seconds if rc == 0 else None, "s", note=tail if rc else "")


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "numerics": "pinned (AVX2)" if os.environ.get("ARITH_PIN_AVX2") == "1" else os.environ.get("MKL_CBWR", "native"),
            "device": "cpu"}


def markdown(report: Report) -> str:
    rows = ["| figure | value | target | met |", "|---|---|---|---|"]
    for f in report.figures:
        value = "—" if f.value is None else f"{f.value:,.3g} {f.unit}".strip()
        rows.append(f"| {f.name} | {value} | {f.target} | {({True: 'yes', False: 'no'}).get(f.met, '')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    from analysis.models import load_model
    from analysis.params import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["heads", "controls", "scaling", "pipeline", "make", "setup"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    params = load_params(REPO / "params.yaml")
    report = Report(machine())
    print(f"bench on {report.machine['cpu']}, {report.machine['threads']} threads, {report.machine['numerics']}")
    limit = matmul_limit()
    report.add("limit: float32 matmul 2048³", limit / 1e9, "GFLOP/s")
    start = time.perf_counter()
    model = load_model(args.model, params)
    report.add("bundled model load", time.perf_counter() - start, "s", "≤ 15", lambda v: v <= 15,
               note="from the converted-model cache")
    forward_and_notebook(report, model, params, limit)
    if "heads" not in args.skip:
        head_ranking(report, model, params)
    if "controls" not in args.skip:
        controls(report, model, params)
    if "pipeline" not in args.skip:
        pipeline(report, model, args.model, limit)
    if "scaling" not in args.skip:
        import yaml
        scaling(report, model, yaml.safe_load((REPO / "params.yaml").read_text()), args.model, args.scales)
    if "make" not in args.skip:
        make_figures(report, args.model)
    if "setup" not in args.skip:
        setup_figures(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=1) + "\n")
    print(f"\n{markdown(report)}\n\nwritten: {args.out}")


if __name__ == "__main__":
    main()
