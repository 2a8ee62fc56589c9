"""The pipeline: one module per DVC stage, plus the shared code they import (see README.md).

Importing this package sets MKL's conditional numerical reproducibility to its strict mode
on the processor's own code path (`MKL_CBWR=AUTO,STRICT`), whose results do not depend on
the number of threads; PyTorch's kernels run natively (AVX-512 where there is one). This
is the default because the AVX2 pin does not give identical bits across processor makers
(measured on an AMD EPYC: README.md, "What reproduces where") and costs 1.3-1.75x on
AVX-512 machines. `ARITH_PIN_AVX2=1` restores the pin (PyTorch, MKL and oneDNN held to
AVX2), for comparing bits between Intel machines of different generations. The variables
must be set before torch runs its first operation; every entry point imports `analysis`
first.
"""

import os

DEFAULT_NUMERICS = {
    "MKL_CBWR": "AUTO,STRICT",  # MKL on this processor's path, independent of the thread count
}
PINNED_NUMERICS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's vectorised CPU kernels
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (mkldnn) kernels
}

for key, value in (PINNED_NUMERICS if os.environ.get("ARITH_PIN_AVX2") == "1" else DEFAULT_NUMERICS).items():
    os.environ.setdefault(key, value)
