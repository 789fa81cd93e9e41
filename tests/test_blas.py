"""The OpenBLAS fast path (seal_env._blas) and its warnings, each case in a fresh Python process: this process's BLAS
is left as it is."""

import os
import shutil
import stat
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


def import_seal_env(before: str = "", show: str = "_blas.loaded_path", **env: str) -> tuple[str, str]:
    """``import seal_env`` in a new process (after running ``before``) with these environment variables: what
    ``show`` (by default ``_blas.loaded_path``) is there, and what it wrote to stderr (its warnings, as a user sees
    them)."""
    unset = ("SEAL_ENV_BLAS", "SEAL_ENV_GEMV", "CC", "PYTHONWARNINGS")
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    code = f"{before}\nimport seal_env\nfrom seal_env import _blas\nprint({show})\n"
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


SCIPY = pytest.mark.skipif(not _blas._scipy_openblas(), reason="scipy-openblas32 (seal-env's cpu extra) not installed")
PRODUCT = """
import numpy as np, mlx.core as mx
a, b = np.random.default_rng(0).standard_normal((2, 37, 300), dtype=np.float32)
got = np.array(mx.array(a) @ mx.array(b).T)
print(float(np.abs(got - a.astype(np.float64) @ b.T.astype(np.float64)).max()))
"""


@SCIPY
def test_scipy_openblas_comes_first_reached_through_seal_envs_sgemm_with_the_kernels_asked_for():
    shown = "_blas.loaded_path, _blas.symbol_prefix, _blas.gemv_library is not None, _blas.core_name()"
    path, prefix, shim, core = import_seal_env(show=shown)[0].split()
    assert path in _blas._scipy_openblas() and prefix == "scipy_" and shim == "True" and core
    # mlx's products do go to it: a product that only a working sgemm gets right
    error, stderr = import_seal_env(PRODUCT.replace("import numpy", "import seal_env\nimport numpy"))
    assert float(error.splitlines()[0]) < 1e-3 and stderr == ""
    # the kernels are OpenBLAS's choice, or the user's through OPENBLAS_CORETYPE
    assert import_seal_env(show="_blas.core_name()", OPENBLAS_CORETYPE="Haswell")[0] == "Haswell"


@SCIPY
def test_scipy_openblas_without_seal_envs_sgemm_is_passed_over(tmp_path):
    # no compiler and nothing built: the next library, a plain one, serves mlx
    shown = "_blas.loaded_path, repr(_blas.symbol_prefix)"
    loaded, stderr = import_seal_env(show=shown, CC=str(tmp_path / "no-cc"), SEAL_ENV_CACHE=str(tmp_path))
    assert stderr == "" and "scipy" not in loaded and loaded.endswith("''")
    # asked for by name, it cannot serve: none, and the warning says which
    (scipy,) = _blas._scipy_openblas()
    loaded, stderr = import_seal_env(show=shown, SEAL_ENV_BLAS=scipy, SEAL_ENV_GEMV="off")
    assert loaded == "None ''" and NOT_FOUND in stderr and f"SEAL_ENV_BLAS={scipy!r} did not load" in stderr


# The one-row sgemm (csrc/gemv_sgemm.c) is compiled into <cache>/blas and loaded into every process that imports
# seal_env: only from a folder and file that no one else can write.
GEMV = pytest.mark.skipif(_blas.gemv_library is None, reason="no one-row sgemm here (no OpenBLAS or no cc)")
NOT_LOADED = "seal_env: not loading the one-row sgemm"


def import_gemv(cache, **env: str) -> tuple[bool, str]:
    """``import seal_env`` in a new process with ``SEAL_ENV_CACHE=cache``: whether it loaded the one-row sgemm, and
    its stderr."""
    loaded, stderr = import_seal_env(show="_blas.gemv_library is not None", SEAL_ENV_CACHE=str(cache), **env)
    return loaded == "True", stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A ``blas`` folder as ``import seal_env`` builds it (with ``cc``), to copy into each test's cache."""
    cache = tmp_path_factory.mktemp("cache")
    assert import_gemv(cache) == (True, "")
    return cache / "blas"


@GEMV
def test_the_one_row_sgemm_is_built_into_a_private_folder_and_loaded(built):
    assert stat.S_IMODE(built.stat().st_mode) == 0o700  # whatever the umask
    (library,) = built.glob("gemv_sgemm-*.so")
    assert not library.stat().st_mode & 0o022
    built_at = library.stat().st_mtime_ns
    assert import_gemv(built.parent) == (True, "")  # found and loaded again, not rebuilt
    assert library.stat().st_mtime_ns == built_at


def group_writable_folder(blas, library):
    blas.chmod(0o777)


def other_writable_file(blas, library):
    library.chmod(0o757)


def symlinked_file(blas, library):
    real = blas.parent / library.name
    library.rename(real)
    library.symlink_to(real)


def symlinked_folder(blas, library):
    blas.rename(blas.parent / "elsewhere")
    blas.symlink_to(blas.parent / "elsewhere")


def file_of_another_user(blas, library):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(library, 65534, 65534)


@GEMV
@pytest.mark.parametrize(
    "unsafe, reason",
    [
        (group_writable_folder, "writable by group or others"),
        (other_writable_file, "writable by group or others"),
        (symlinked_file, "symbolic link"),
        (symlinked_folder, "symbolic link"),
        (file_of_another_user, "owned by uid 65534"),
    ],
)
def test_a_library_someone_else_could_have_written_is_not_loaded(built, tmp_path, unsafe, reason):
    blas = tmp_path / "blas"
    shutil.copytree(built, blas)
    (library,) = blas.glob("gemv_sgemm-*.so")
    unsafe(blas, library)
    loaded, stderr = import_gemv(tmp_path)
    assert not loaded
    assert stderr.count("UserWarning") == 1 and NOT_LOADED in stderr and reason in stderr
    assert str(blas) in stderr and "SEAL_ENV_CACHE" in stderr and "SEAL_ENV_GEMV=off" in stderr  # where, and the fix
    assert import_gemv(tmp_path, SEAL_ENV_GEMV="off") == (False, "")  # switched off: not looked at, no warning


FAILING_CC = """#!/bin/sh
echo called >> {calls}
echo "fake-cc: cannot compile" >&2
exit 1
"""


@pytest.mark.skipif(_blas.loaded_path is None, reason="no OpenBLAS on this machine")
def test_a_failing_compiler_is_tried_once_until_its_marker_is_deleted(tmp_path):
    calls, cc = tmp_path / "calls", tmp_path / "fake-cc"
    cc.write_text(FAILING_CC.format(calls=calls))
    cc.chmod(0o755)
    cache = tmp_path / "cache"

    def compiled() -> int:
        assert import_gemv(cache, CC=str(cc)) == (False, "")  # the stock path, silently
        return len(calls.read_text().splitlines())

    assert compiled() == 1
    (marker,) = (cache / "blas").glob("gemv_sgemm-*.failed")
    assert "fake-cc: cannot compile" in marker.read_text()  # why, for whoever looks
    assert compiled() == 1  # not tried again
    marker.unlink()
    assert compiled() == 2
    assert (cache / "blas" / marker.name).exists()
