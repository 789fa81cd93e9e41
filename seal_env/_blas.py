"""Load an optimized BLAS before mlx on Linux.

The Linux ``mlx[cpu]`` wheel links a reference BLAS. If OpenBLAS is loaded into the global symbol namespace
*before* ``mlx`` is imported, mlx's ``sgemm`` calls resolve to it instead (the speed-up is in
``benchmarks/RESULTS.md``). This module does that once, at ``import seal_env``.

Set ``SEAL_ENV_BLAS=/path/to/libopenblas.so`` to choose the library, or ``SEAL_ENV_BLAS=none`` to skip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings

from seal_env.environ import ON, switch

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

FIX = (
    "Install OpenBLAS (Debian/Ubuntu: `apt-get install libopenblas0-pthread`) or point SEAL_ENV_BLAS at a "
    "libopenblas.so, then restart Python (it must load before `import mlx`)."
)

#: Path of the BLAS library that was loaded, or None. Set by :func:`load_fast_blas`.
loaded_path: str | None = None
_attempted = False


def _candidates() -> list[str]:
    chosen = os.environ.get("SEAL_ENV_BLAS", "").strip()
    if chosen and chosen.lower() not in ON:
        return [chosen]
    found = ctypes.util.find_library("openblas")
    return [p for p in (*CANDIDATES, found) if p]


def load_fast_blas() -> str | None:
    """Load OpenBLAS with RTLD_GLOBAL if we are on Linux and mlx is not imported yet; warn once if we can't."""
    global loaded_path, _attempted
    if _attempted or not sys.platform.startswith("linux"):
        return loaded_path
    _attempted = True
    if not switch("SEAL_ENV_BLAS"):
        return None
    for path in _candidates():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        loaded_path = path
        break
    if loaded_path is None:
        chosen = os.environ.get("SEAL_ENV_BLAS", "").strip()
        tried = f" (SEAL_ENV_BLAS={chosen!r} did not load)" if chosen and chosen.lower() not in ON else ""
        warnings.warn(
            f"seal_env: no optimized BLAS found{tried}; mlx matmuls on CPU will be ~30x slower. {FIX}", stacklevel=3
        )
    elif "mlx.core" in sys.modules:
        warnings.warn(
            "seal_env: mlx was imported before seal_env, so the optimized BLAS may not be used. "
            "Import seal_env first (or set LD_PRELOAD to the OpenBLAS library).",
            stacklevel=3,
        )
    return loaded_path
