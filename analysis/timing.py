"""What a stage shows while it runs, on standard error: progress bars over its long loops,
timing lines, and the work it did (forward passes and tokens through the model).

Progress bars draw only when standard error is a terminal (CI logs stay readable);
ARITH_PROGRESS=1 draws them anyway and TQDM_DISABLE=1 never. Nothing they do reaches the
outputs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


@contextmanager
def timed(label: str) -> Iterator[None]:
    """Print `label: 12.3 s` to standard error when the block ends."""
    start = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def _progress_disabled() -> bool | None:
    if os.environ.get("TQDM_DISABLE") == "1":
        return True
    if os.environ.get("ARITH_PROGRESS") == "1":
        return False
    return None  # tqdm: off unless standard error is a terminal


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "batch") -> Iterable[T]:
    """`items`, with a progress bar on standard error that disappears when the loop ends."""
    return tqdm(items, desc=f"  {desc}", total=total, unit=unit, leave=False, file=sys.stderr,
                disable=_progress_disabled(), dynamic_ncols=True, mininterval=0.5)


@dataclass
class Work:
    """Forward passes through the model (whole, or from/to a layer) and the token positions
    they ran; counted by wrapping the model's forward."""
    forward_passes: int = 0
    tokens: int = 0


def _positions(model, inputs) -> int:
    if isinstance(inputs, (str, list)):  # text: TransformerLens tokenizes it the same way
        inputs = model.to_tokens(inputs)
    shape = inputs.shape  # tokens (batch, pos) or (pos), or a residual stream (batch, pos, d_model)
    return shape[0] * shape[1] if len(shape) >= 2 else shape[0]


@contextmanager
def counting(model) -> Iterator[Work]:
    """Count the model's forward passes and their tokens (batch × positions) in the block.
    It wraps the instance's `forward`: run_with_hooks calls that directly, bypassing the
    module hooks a pre-hook would need."""
    work, forward = Work(), model.forward

    def counted(*args, **kwargs):
        work.forward_passes += 1
        work.tokens += _positions(model, args[0] if args else kwargs.get("input"))
        return forward(*args, **kwargs)

    model.forward = counted
    try:
        yield work
    finally:
        del model.forward  # the class's method again
