"""Load an optimized BLAS before mlx on Linux.

The Linux ``mlx[cpu]`` wheel links a reference BLAS. If OpenBLAS is loaded into the global symbol namespace
*before* ``mlx`` is imported, mlx's ``sgemm`` calls resolve to it instead (the speed-up is in
``benchmarks/RESULTS.md``). This module does that once, at ``import seal_env``.

Set ``SEAL_ENV_BLAS=/path/to/libopenblas.so`` to choose the library, or ``SEAL_ENV_BLAS=none`` to skip.

With OpenBLAS found and a C compiler on the machine (``$CC`` or ``cc``), a small ``cblas_sgemm``
(``csrc/gemv_sgemm.c``, compiled once into the cache folder) is loaded ahead of it: products with one row (a
decoding step at batch 1) go to ``cblas_sgemv``, which reads the weights once instead of packing them, and every
other product to OpenBLAS's ``cblas_sgemm``. ``SEAL_ENV_GEMV=off`` skips it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from seal_env.environ import ON, cache_dir, switch

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

GEMV_SOURCE = Path(__file__).parent / "csrc" / "gemv_sgemm.c"

#: Path of the BLAS library that was loaded, or None. Set by :func:`load_fast_blas`.
loaded_path: str | None = None
#: The loaded one-row ``cblas_sgemm`` (``csrc/gemv_sgemm.c``), or None. Set by :func:`load_fast_blas`.
gemv_library: ctypes.CDLL | None = None
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
            blas = ctypes.CDLL(path)  # local first: the one-row sgemm must enter the global namespace before it
        except OSError:
            continue
        _load_gemv_sgemm(blas)
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
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


def _load_gemv_sgemm(blas: ctypes.CDLL) -> None:
    """Load ``csrc/gemv_sgemm.c`` (compiled if needed) into the global namespace, bound to ``blas``'s
    ``cblas_sgemm`` / ``cblas_sgemv``; leave things as they are when switched off or when it cannot be built."""
    global gemv_library
    if not switch("SEAL_ENV_GEMV") or not all(hasattr(blas, f) for f in ("cblas_sgemm", "cblas_sgemv")):
        return
    try:  # a cache folder that cannot be written, a compiler that fails: the stock path, as without a compiler
        built = _compiled_gemv_sgemm()
        if built is None:
            return
        library = ctypes.CDLL(str(built), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return
    sgemm, sgemv = (ctypes.cast(f, ctypes.c_void_p) for f in (blas.cblas_sgemm, blas.cblas_sgemv))
    library.seal_gemv_bind(sgemm, sgemv)
    gemv_library = library


def _compiled_gemv_sgemm() -> Path | None:
    """``csrc/gemv_sgemm.c`` compiled into the cache folder (once per source, compiler and machine type), or None
    without a C compiler or when the build fails."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None or not GEMV_SOURCE.exists():
        return None
    source = GEMV_SOURCE.read_bytes()
    tag = hashlib.sha256(source + f"{compiler} {platform.machine()}".encode()).hexdigest()[:16]  # shared homes
    target = cache_dir() / "blas" / f"gemv_sgemm-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(built), str(GEMV_SOURCE)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        os.replace(built, target)  # atomic: parallel workers never load a half-written file
    return target
