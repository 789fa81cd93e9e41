"""Which BLAS mlx's products run on, with which kernels, and how fast: an fp32 1024 x 1024 product.

    python -m benchmarks.blas_kernels
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.blas_kernels   # OpenBLAS's own kernel choice
    SEAL_ENV_BLAS=none python -m benchmarks.blas_kernels                              # mlx's reference BLAS

Prints the library ``import seal_env`` loaded (seal_env._blas), its kernels (``openblas_get_corename``) and the
GFLOP/s of ``a @ b`` (1024^3, best of ``--rounds`` rounds of ``--products`` products) at 1 and at all BLAS threads.
"""

from __future__ import annotations

import argparse
import os
import time

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env import _blas
from seal_env.executors.base import blas_threads

import mlx.core as mx


def gflops(n: int, rounds: int, products: int) -> float:
    """Best GFLOP/s of an mlx fp32 ``n x n @ n x n`` product, over ``rounds`` rounds of ``products`` products."""
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(products):
            mx.eval(a @ b)
        best = min(best, (time.perf_counter() - t0) / products)
    return 2 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--products", type=int, default=10)
    args = p.parse_args(argv)
    library = os.path.basename(_blas.loaded_path) if _blas.loaded_path else "mlx's reference BLAS"
    print(f"BLAS: {library}; kernels: {_blas.core_name()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    for threads in sorted({1, os.cpu_count() or 1}):
        if _blas.loaded_path:
            blas_threads(threads)
        print(f"{threads} thread(s): {gflops(1024, args.rounds, args.products):.0f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
