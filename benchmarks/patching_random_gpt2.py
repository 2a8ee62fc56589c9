"""Time the patching stage on a random GPT-2-small-shaped model, on CPU or GPU.

    python benchmarks/patching_random_gpt2.py --device cuda --out /tmp/out [--set patching.exhaustive_heads=true]

A random model makes no arithmetic error, so the model is read as erring on every second
pair (the held-out design then runs in full: selection, evaluation, 1,000-draw controls,
EAP-IG and the circuit); its SAE is a random one at layer 9. This times the work, it
measures nothing about GPT-2. Writes <out>/patching.json (the stage's results) and
<out>/timing.json (wall seconds, device name, overrides). The model is the tests' random
GPT-2 small (seeded weights, GPT-2's real tokenizer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers import make_params, random_gpt2_small, random_sae  # noqa: E402

from analysis import patching  # noqa: E402
from analysis.artifacts import StagePaths  # noqa: E402
from analysis.errorsets import Read  # noqa: E402


def erring_every_second(model, items) -> Read:
    error = torch.arange(len(items)) % 2 == 0
    return Read({"corrupt": error, "clean": torch.zeros_like(error)}, {"corrupt": ~error, "clean": torch.ones_like(error)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], help="a dotted params override, key=yaml-value")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    params = make_params(**{"patching.causal": ["all3"], "patching.circuit": ["all3"], **overrides})
    torch.manual_seed(0)
    model = random_gpt2_small().to(args.device)
    sae = patching.LoadedSae(random_sae(768, 4096).to(args.device), "blocks.9.hook_resid_pre", torch.rand(4096))
    patching.read_answers = erring_every_second
    patching.load_saes = lambda *a: {"random": sae}
    patching.load_tensors = lambda *a: {"few_shot/answers": torch.zeros(1, 1, dtype=torch.long)}
    start = time.perf_counter()
    patching.run(model, params, "gpt2-small", StagePaths("gpt2-small", "patching", root=args.out / "data"))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "patching.json").write_bytes((args.out / "data/gpt2-small/patching.json").read_bytes())
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    (args.out / "timing.json").write_text(json.dumps({"wall_s": wall, "device": name, "overrides": overrides}))
    print(f"patching on {name}: {wall:.1f} s  {overrides}")


if __name__ == "__main__":
    main()
