"""Forward passes of the bundled SmolLM2 with TransformerLens' own weight layout against
load_model's (store_transposed), in one run: time per pass, their ratio, and whether the
logits agree bit for bit.

    python benchmarks/store_transposed.py [--batch 12] [--repeats 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.models import load_gguf_wheel_model, load_model  # noqa: E402
from analysis.params import load_params  # noqa: E402


def seconds_per_pass(model, tokens: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        logits = model(tokens)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(tokens)
    return (time.perf_counter() - start) / repeats, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    plain = load_gguf_wheel_model("smollm2-135m", params.model("smollm2-135m"), "cpu").eval()
    stored = load_model("smollm2-135m", params, device="cpu")
    text = params.prompt.canonical
    tokens = plain.to_tokens([text] * args.batch)
    t_plain, logits_plain = seconds_per_pass(plain, tokens, args.repeats)
    t_stored, logits_stored = seconds_per_pass(stored, tokens, args.repeats)
    print(f"batch {args.batch} x {tokens.shape[1]} tokens, {args.repeats} passes each, {torch.get_num_threads()} threads")
    print(f"TransformerLens layout: {t_plain * 1000:.1f} ms per pass")
    print(f"store_transposed:       {t_stored * 1000:.1f} ms per pass")
    print(f"ratio: {t_plain / t_stored:.2f}x; logits bit for bit equal: {torch.equal(logits_plain, logits_stored)}")


if __name__ == "__main__":
    main()
