"""Timing lines on standard error: what a stage is doing, and how long each part took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(label: str) -> Iterator[None]:
    """Print `label: 12.3 s` to standard error when the block ends."""
    start = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
