"""The OpenBLAS fast path (seal_env._blas) and its warnings, each case in a fresh Python process: this process's BLAS
is left as it is."""

import os
import subprocess
import sys

from seal_env import _blas

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fast path is for Linux only")

# as on a machine without OpenBLAS: every attempt to load it fails as a missing library does
NO_OPENBLAS = """
import ctypes
cdll = ctypes.CDLL
def refuse_openblas(name, *args, **kwargs):
    if name and "openblas" in str(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")
    return cdll(name, *args, **kwargs)
ctypes.CDLL = refuse_openblas
"""
NOT_FOUND = "seal_env: no optimized BLAS found"


def import_seal_env(before: str = "", **env: str) -> tuple[str, str]:
    """``import seal_env`` in a new process (after running ``before``) with these environment variables: what
    ``_blas.loaded_path`` is there, and what it wrote to stderr (its warnings, as a user sees them)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("SEAL_ENV_BLAS", "PYTHONWARNINGS")}
    code = f"{before}\nimport seal_env\nfrom seal_env import _blas\nprint(_blas.loaded_path)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip(), out.stderr


def test_blas_file_named_by_seal_env_blas_missing_warns_with_the_fix(tmp_path):
    missing = str(tmp_path / "libopenblas.so.0")
    loaded, stderr = import_seal_env(SEAL_ENV_BLAS=missing)
    assert loaded == "None"  # the library asked for, or none: never another one in its place
    assert NOT_FOUND in stderr and _blas.FIX in stderr and stderr.count("UserWarning") == 1
    assert f"SEAL_ENV_BLAS={missing!r} did not load" in stderr  # the path that failed is named


def test_no_openblas_found_warns_with_the_fix():
    loaded, stderr = import_seal_env(NO_OPENBLAS)
    assert loaded == "None"
    assert NOT_FOUND in stderr and _blas.FIX in stderr and stderr.count("UserWarning") == 1
    assert "apt-get install libopenblas0-pthread" in stderr and "SEAL_ENV_BLAS" in stderr
    assert "did not load" not in stderr  # nothing was asked for by name


def test_blas_switched_off_is_silent():
    assert import_seal_env(SEAL_ENV_BLAS="off") == ("None", "")


@pytest.mark.skipif(_blas.loaded_path is None, reason="no OpenBLAS on this machine")
def test_openblas_loads_quietly_and_mlx_imported_first_is_warned_about():
    assert import_seal_env() == (_blas.loaded_path, "")
    assert import_seal_env(SEAL_ENV_BLAS=_blas.loaded_path) == (_blas.loaded_path, "")
    loaded, stderr = import_seal_env("import mlx.core")
    assert loaded == _blas.loaded_path
    assert "mlx was imported before seal_env" in stderr and "Import seal_env first" in stderr
