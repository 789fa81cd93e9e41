"""Load an optimized BLAS before mlx on Linux.

The Linux ``mlx[cpu]`` wheel links a reference BLAS. If an OpenBLAS ``cblas_sgemm`` is in the global symbol namespace
*before* ``mlx`` is imported, mlx's products resolve to it instead (the speed-up is in ``benchmarks/RESULTS.md``).
This module does that once, at ``import seal_env``, with the first of these that loads:

1. ``SEAL_ENV_BLAS=/path/to/libopenblas.so`` if set (``SEAL_ENV_BLAS=none`` skips all of this);
2. the OpenBLAS of the ``scipy-openblas32`` wheel (in seal-env's ``cpu`` extra): a current OpenBLAS, so it picks the
   right kernels for recent CPUs (AVX-512 ones included). Its symbols carry a ``scipy_`` prefix, so mlx reaches it
   only through seal-env's ``cblas_sgemm`` below, which needs a C compiler;
3. the system's OpenBLAS (Debian/Ubuntu: ``libopenblas0-pthread``).

With a C compiler on the machine (``$CC`` or ``cc``), seal-env's ``cblas_sgemm`` (``csrc/gemv_sgemm.c``, compiled
once into the cache folder) is loaded ahead of the library: products with one row (a decoding step at batch 1) go to
``cblas_sgemv``, which reads the weights once instead of packing them, and every other product to the library's
``cblas_sgemm``. ``SEAL_ENV_GEMV=off`` loads no compiled code: mlx then calls a plain (system) OpenBLAS directly.

OpenBLAS chooses its kernels when it loads, from the CPU or from ``OPENBLAS_CORETYPE`` if that is set;
:func:`core_name` says which it runs (``benchmarks/RESULTS.md`` has what a forced older core costs).

The compiled library runs in every process that imports seal_env, so it is only built into, and loaded from, a folder
no one else can write: ``<cache folder>/blas`` is created with mode 0o700, and a library is loaded only if that folder
and the file are owned by this user, not writable by group or others, and not symbolic links (checked on the opened
file, which is then loaded through ``/proc/self/fd``, so it cannot be swapped in between). Otherwise it is skipped
(a plain OpenBLAS still loads) with one warning that names the path, the reason and the fix. A compiler that fails is
tried once: its output goes to a ``gemv_sgemm-<tag>.failed`` marker next to where the library would be, and while
the marker exists the build is skipped silently; delete it to try again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from seal_env.env_vars import ON, cache_dir, switch

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
#: Symbol prefixes of the OpenBLAS builds we know: a plain one, and scipy-openblas32's.
PREFIXES = ("", "scipy_")

FIX = (
    "Install seal-env's `cpu` extra (it brings scipy-openblas32; a C compiler is needed to use it) or the system's "
    "OpenBLAS (Debian/Ubuntu: `apt-get install libopenblas0-pthread`), or point SEAL_ENV_BLAS at a libopenblas.so, "
    "then restart Python (it must load before `import mlx`)."
)

GEMV_SOURCE = Path(__file__).parent / "csrc" / "gemv_sgemm.c"

#: Path of the BLAS library that was loaded, or None. Set by :func:`load_fast_blas`.
loaded_path: str | None = None
#: The prefix of that library's symbols (``"scipy_"`` for scipy-openblas32). Set by :func:`load_fast_blas`.
symbol_prefix = ""
#: The loaded ``cblas_sgemm`` of ``csrc/gemv_sgemm.c`` (one-row products to sgemv), or None.
gemv_library: ctypes.CDLL | None = None
_attempted = False


def _scipy_openblas() -> list[str]:
    """The library of the ``scipy-openblas32`` wheel, if it is installed (found without importing it)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(str(p) for p in Path(spec.submodule_search_locations[0], "lib").glob("libscipy_openblas*.so"))


def _candidates() -> list[str]:
    chosen = os.environ.get("SEAL_ENV_BLAS", "").strip()
    if chosen and chosen.lower() not in ON:
        return [chosen]
    found = ctypes.util.find_library("openblas")
    return [p for p in (*_scipy_openblas(), *CANDIDATES, found) if p]


def _prefix(blas: ctypes.CDLL) -> str | None:
    """The prefix of ``blas``'s ``cblas_sgemm``, or None if it has none we know."""
    return next((p for p in PREFIXES if hasattr(blas, f"{p}cblas_sgemm") and hasattr(blas, f"{p}cblas_sgemv")), None)


def load_fast_blas() -> str | None:
    """Load the first BLAS that can serve mlx (module docstring) if we are on Linux and mlx is not imported yet;
    warn once if none can."""
    global loaded_path, symbol_prefix, _attempted
    if _attempted or not sys.platform.startswith("linux"):
        return loaded_path
    _attempted = True
    if not switch("SEAL_ENV_BLAS"):
        return None
    for path in _candidates():
        try:
            blas = ctypes.CDLL(path)  # local first: seal-env's sgemm must enter the global namespace before it
        except OSError:
            continue
        prefix = _prefix(blas)
        if prefix is None:
            continue
        if not _load_gemv_sgemm(blas, prefix) and prefix:
            continue  # mlx cannot reach prefixed symbols without seal-env's sgemm
        if not prefix:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        loaded_path, symbol_prefix = path, prefix
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


def function(name: str) -> Any:
    """The loaded OpenBLAS's function ``name`` (e.g. ``"openblas_set_num_threads"``, without a prefix), or None."""
    if loaded_path is None:
        return None
    return getattr(ctypes.CDLL(loaded_path), symbol_prefix + name, None)


def core_name() -> str | None:
    """The kernels the loaded OpenBLAS runs (``openblas_get_corename``: e.g. ``"SkylakeX"``, ``"Haswell"``), or
    None."""
    get = function("openblas_get_corename")
    if get is None:
        return None
    get.restype = ctypes.c_char_p
    return str(get().decode())


def config() -> str | None:
    """The loaded OpenBLAS's build (``openblas_get_config``: version and options), or None."""
    get = function("openblas_get_config")
    if get is None:
        return None
    get.restype = ctypes.c_char_p
    return str(get().decode()).strip()


class NotPrivateError(Exception):
    """A folder or library file that someone other than this user could have written: nothing in it is loaded."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _load_gemv_sgemm(blas: ctypes.CDLL, prefix: str) -> bool:
    """Load ``csrc/gemv_sgemm.c`` (compiled if needed) into the global namespace, bound to ``blas``'s
    ``cblas_sgemm`` / ``cblas_sgemv`` (their names with ``prefix``); whether it is loaded. Leaves things as they are
    when switched off or when it cannot be built, and warns once when its folder or file could have been written by
    someone else."""
    global gemv_library
    library = _gemv_sgemm()
    if library is None:
        return False
    sgemm, sgemv = (ctypes.cast(getattr(blas, prefix + f), ctypes.c_void_p) for f in ("cblas_sgemm", "cblas_sgemv"))
    library.seal_gemv_bind(sgemm, sgemv)
    gemv_library = library
    return True


@functools.cache
def _gemv_sgemm() -> ctypes.CDLL | None:
    """``csrc/gemv_sgemm.c`` loaded (with RTLD_GLOBAL), or None when switched off or when it cannot be built or
    loaded (once per process: a warning is not repeated for the next candidate library)."""
    if not switch("SEAL_ENV_GEMV"):
        return None
    try:  # a cache folder that cannot be written, a compiler that fails: the stock path, as without a compiler
        built = _compiled_gemv_sgemm()
        if built is None:
            return None
        return _load_private(built)
    except NotPrivateError as error:
        warnings.warn(
            f"seal_env: not loading the one-row sgemm from {error.path}: {error.reason}, so another user could "
            f"have put code there that would run in this process. A plain OpenBLAS is used without it. Fix: delete "
            f"{error.path} (seal-env rebuilds it, private to you), or set SEAL_ENV_CACHE to a folder only you can "
            "write; SEAL_ENV_GEMV=off skips the one-row sgemm.",
            stacklevel=5,
        )
        return None
    except OSError:
        return None


def _compiled_gemv_sgemm() -> Path | None:
    """``csrc/gemv_sgemm.c`` compiled into ``<cache folder>/blas`` (once per source, compiler and machine type), or
    None without a C compiler or when the build failed (now, or earlier: its ``.failed`` marker is there). Raises
    :class:`NotPrivateError` when that folder is not private to this user."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None or not GEMV_SOURCE.exists():
        return None
    source = GEMV_SOURCE.read_bytes()
    tag = hashlib.sha256(source + f"{compiler} {platform.machine()}".encode()).hexdigest()[:16]  # shared homes
    folder = _private_folder(cache_dir() / "blas")
    target = folder / f"gemv_sgemm-{tag}.so"
    failed = target.with_suffix(".failed")
    if os.path.lexists(target):
        return target
    if failed.exists():
        return None
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(built), str(GEMV_SOURCE)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            output = getattr(error, "stderr", None) or b""
            marker = Path(tmp) / failed.name
            marker.write_text(f"{' '.join(command)}\n{error}\n{output.decode(errors='replace')}")
            os.replace(marker, failed)
            return None
        built.chmod(0o700)  # whatever the umask: not writable by group or others
        os.replace(built, target)  # atomic: parallel workers never load a half-written file
    return target


def _private_folder(folder: Path) -> Path:
    """``folder``, created with mode 0o700 if missing; raises :class:`NotPrivateError` if it is not private."""
    try:
        os.mkdir(folder, 0o700)  # masked by the umask, which can only take bits away: set below
        created = True
    except FileExistsError:
        created = False
    fd = _open_private(folder, directory=True)
    try:
        if created:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return folder


def _load_private(path: Path) -> ctypes.CDLL:
    """The library ``path`` loaded with RTLD_GLOBAL, after checking that it and its folder are private (on the open
    files, so neither can be swapped between the check and the load); raises :class:`NotPrivateError` if not."""
    folder = _open_private(path.parent, directory=True)
    try:
        fd = _open_private(path, directory=False, folder=folder)
    finally:
        os.close(folder)
    # Kept open for the life of the process: the dynamic linker knows the library by this name from now on, so no
    # other file may ever get this descriptor number.
    by_fd = f"/proc/self/fd/{fd}"
    try:
        return ctypes.CDLL(by_fd if os.path.exists(by_fd) else str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        os.close(fd)
        raise


def _open_private(path: Path, directory: bool, folder: int | None = None) -> int:
    """A read-only descriptor of ``path`` (of ``path.name`` in the open ``folder`` if given), a folder or a regular
    file owned by this user and not writable by group or others; raises :class:`NotPrivateError` otherwise."""
    name = path if folder is None else path.name
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(name, flags, dir_fd=folder)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        why = _not_private(os.lstat(name, dir_fd=folder), directory) or "it changed while being checked"
        raise NotPrivateError(path, why) from None
    why_not = _not_private(os.fstat(fd), directory)
    if why_not is not None:
        os.close(fd)
        raise NotPrivateError(path, why_not)
    return fd


def _not_private(st: os.stat_result, directory: bool) -> str | None:
    """Why a file with these stats could have been written by someone other than this user, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return "it is not a folder" if directory else "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by group or others (mode {stat.filemode(st.st_mode)})"
    return None
