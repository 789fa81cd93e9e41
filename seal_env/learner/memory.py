"""Process memory: let glibc keep freed blocks while training, and hand memory back after each fine-tune."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from seal_env.env_vars import switch

import mlx.core as mx


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MB in its heap instead of handing them back to the OS at once.

    mlx's CPU buffer cache holds 32 MB by default; a training step frees and reallocates far more (activations of
    every layer), and glibc unmaps large freed blocks, so every step page-faults fresh pages. This sets a 32 MB mmap
    threshold (glibc's maximum) and a 1 GB trim threshold (the effect is measured in ``benchmarks/RESULTS.md``);
    :func:`release_memory` still trims after each fine-tune. Process-wide; ``SEAL_ENV_MALLOC_TUNING=off`` skips it.
    """
    if _LIBC is None or not hasattr(_LIBC, "mallopt") or not switch("SEAL_ENV_MALLOC_TUNING"):
        return
    _LIBC.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    _LIBC.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def release_memory() -> None:
    """Hand freed memory back to the OS (mlx's buffer cache, then glibc's heap via ``malloc_trim``).

    Called after each fine-tune so that the resident set stays flat over many rewards instead of keeping every
    fragment of the largest step's activations (costs a few page faults at the next fine-tune: well under 1%).
    """
    mx.clear_cache()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
