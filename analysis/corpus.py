"""The text an SAE is trained and evaluated on: English prose mixed with arithmetic.

Prose: the Python Language Reference's topic texts (`pydoc_data.topics` of CPython 3.11.7,
about 465,000 characters of technical English, PSF licence), shipped in this repository
as analysis/corpus_data/python-reference-topics.txt.gz. `pydoc_data.topics` itself differs
between CPython patch releases; the shipped copy does not, and its SHA-256 is checked
against params.yaml (sae_train.corpus.prose_sha256) before any use, so every machine and
every Python trains on the same text, or stops saying why.

Arithmetic: lines of solved additions in the study's format ("3 + 4 = 7. 2 + 9 = 11."),
with 1 to 4 examples a line and operands in 0..max_operand, seeded.

Each source becomes one token stream, cut into windows of `context_size` tokens; the
windows are shuffled together (seeded) and split into training and held-out sets.
"""

from __future__ import annotations

import gzip
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor


PROSE_FILE = Path(__file__).parent / "corpus_data" / "python-reference-topics.txt.gz"
PROSE_SOURCE = "the Python Language Reference topics (pydoc_data.topics of CPython 3.11.7)"
PROSE_PYTHON = "3.11.7"  # the CPython whose pydoc_data.topics the shipped text is


class CorpusError(RuntimeError):
    """The shipped prose is missing or is not the text params.yaml pins."""


def prose_text(expected_sha256: str | None = None, path: Path = PROSE_FILE) -> str:
    """The shipped prose; with `expected_sha256`, checked to be exactly the pinned text."""
    try:
        text = gzip.decompress(path.read_bytes()).decode()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot be read ({exc}); restore it with `git checkout -- {path}`") from None
    digest = hashlib.sha256(text.encode()).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise CorpusError(f"{path}: its text has SHA-256 {digest}, but params.yaml (sae_train.corpus.prose_sha256) "
                          f"pins {expected_sha256}. Restore the file with `git checkout -- {path}`; if you changed "
                          "the corpus on purpose, put its hash in params.yaml, and the SAEs are retrained.")
    return text


def arithmetic_text(n_lines: int, max_operand: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        pairs = [(rng.randint(0, max_operand), rng.randint(0, max_operand)) for _ in range(rng.randint(1, 4))]
        lines.append(" ".join(f"{a} + {b} = {a + b}." for a, b in pairs))
    return "\n".join(lines)


def windows(tokenizer, text: str, context_size: int) -> Int[Tensor, "window pos"]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // context_size
    return torch.tensor(ids[: n * context_size], dtype=torch.long).reshape(n, context_size)


@dataclass(frozen=True)
class Corpus:
    train: Int[Tensor, "window pos"]
    heldout: Int[Tensor, "heldout pos"]
    source: Int[Tensor, "window"]  # of the training windows: 0 prose, 1 arithmetic
    prose_sha256: str


def build_corpus(model, context_size: int, prose_windows: int, arithmetic_windows: int,
                 heldout_fraction: float, max_operand: int, seed: int, prose_sha256: str | None = None) -> Corpus:
    """Seeded prose and arithmetic windows for the model's tokenizer (BOS first where it uses
    one); the prose checked against `prose_sha256` where given."""
    prose = prose_text(prose_sha256)
    generator = torch.Generator().manual_seed(seed)
    body = context_size - (1 if model.cfg.default_prepend_bos else 0)
    prose_w = windows(model.tokenizer, prose, body)
    if len(prose_w) < prose_windows:
        raise ValueError(f"the prose gives {len(prose_w)} windows of {body} tokens, fewer than {prose_windows}")
    prose_w = prose_w[torch.randperm(len(prose_w), generator=generator)[:prose_windows]]
    lines = arithmetic_windows * context_size // 8 + 16  # about 8 tokens an example: enough lines
    arith_w = windows(model.tokenizer, arithmetic_text(lines, max_operand, seed), body)[:arithmetic_windows]
    if len(arith_w) < arithmetic_windows:
        raise ValueError(f"too few arithmetic windows ({len(arith_w)} < {arithmetic_windows})")
    all_windows = torch.cat([prose_w, arith_w])
    source = torch.cat([torch.zeros(len(prose_w), dtype=torch.long), torch.ones(len(arith_w), dtype=torch.long)])
    if model.cfg.default_prepend_bos:
        bos = torch.full((len(all_windows), 1), model.tokenizer.bos_token_id)
        all_windows = torch.cat([bos, all_windows], dim=1)
    order = torch.randperm(len(all_windows), generator=generator)
    all_windows, source = all_windows[order], source[order]
    n_heldout = max(1, int(round(heldout_fraction * len(all_windows))))
    return Corpus(
        train=all_windows[n_heldout:],
        heldout=all_windows[:n_heldout],
        source=source[n_heldout:],
        prose_sha256=hashlib.sha256(prose.encode()).hexdigest(),
    )
