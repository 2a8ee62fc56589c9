"""The pipeline: one module per DVC stage, plus the shared code they import (see README.md).

Importing this package pins the CPU's numeric code paths, so that every x86-64 machine
with AVX2 computes the same bits (measured: README.md, "Same bits on another machine").
PyTorch's own kernels are held to AVX2 and MKL runs in its strict conditional numerical
reproducibility mode for AVX2, whose results do not depend on the number of threads;
without these, a machine with AVX-512 (or another thread count) changes the last bits of
every result. The variables must be set before torch runs its first operation; every
entry point imports `analysis` first. Set ARITH_NATIVE_NUMERICS=1 to opt out (faster,
but the results' bits then depend on the processor).
"""

import os

PINNED_NUMERICS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's vectorised CPU kernels
    "MKL_CBWR": "AVX2,STRICT",  # MKL's code path, independent of the thread count
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (mkldnn) kernels
}

if os.environ.get("ARITH_NATIVE_NUMERICS") != "1":
    os.environ.update(PINNED_NUMERICS)
