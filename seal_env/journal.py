"""Durable files of runs: an append-only JSON-lines journal, whole-file atomic writes, and a folder lock.

The journal holds one record a line, written in one piece (one write call, unless the system takes only part of
it) and fsync'ed before ``append`` returns. A run that is killed mid-write leaves a last line without its newline;
opening the journal drops that line (its record was never complete), so a resumed run continues from the last
complete record. A write that fails (disk full, read-only file system) is cut back, so that the journal again ends
with its last complete record, and raises :class:`JournalWriteError`; once the cause is fixed the run can be
resumed. Any other unreadable line is corruption and raises ``ValueError`` naming the line.

Every JSON file of a run (journal records, ``config.json``, ``results.json``) is written by :func:`dumps`: any
``str`` can be written, lone surrogates (text that is not valid Unicode, e.g. ``"\\ud800"``) as ``\\uXXXX`` escapes
that ``json.loads`` reads back as the same ``str``. A high surrogate directly followed by a low one is, in JSON, the
one character the pair encodes, and is read back as that character (``Journal.append`` returns the record as it
will be read back). Whole files are replaced atomically (:func:`atomic_path`, :func:`write_atomic`,
:func:`write_json_atomic`): a reader, or a run killed mid-write, sees the old file or the whole new one, never a
part. :class:`FolderLock` keeps a second process out of a folder that a run is using.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

_SURROGATE = re.compile("[\ud800-\udfff]")
LOCK_NAME = ".lock"  #: the lock file :class:`FolderLock` creates in a folder


def _plain(value: Any) -> Any:
    """JSON for numpy / mlx scalars and arrays."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def dumps(obj: Any, indent: int | None = None) -> str:
    """``obj`` as JSON text that can always be encoded as UTF-8: non-ASCII characters as they are, lone surrogates
    as ``\\uXXXX`` escapes (``json.loads`` gives the same ``str`` back), numpy / mlx values as plain JSON."""
    text = json.dumps(obj, ensure_ascii=False, default=_plain, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)  # JSON syntax is ASCII: only strings hold them


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document in the file ``path``; one that is not valid JSON is a ``ValueError`` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete records of the journal at ``path`` (none if it does not exist); a torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]  # what follows the last newline is unfinished
    records = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ValueError(f"{path}:{n}: corrupt journal record") from None
    return records


class JournalWriteError(OSError):
    """A journal record could not be written (e.g. the disk is full): the journal still ends with the last complete
    record, and the run can be resumed once the cause is fixed. ``errno`` is the cause's."""


class Journal:
    """Appends records to ``path`` (created with its folder); a torn last line is cut off first."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(end)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _write(self, data: bytes) -> None:
        """Append ``data`` to the journal and make it durable."""
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one record and make it durable before returning; returns the record as :func:`read_records` will
        read it back. A failed write leaves no part of the record and raises :class:`JournalWriteError`."""
        line = dumps(record) + "\n"
        size = os.fstat(self._fd).st_size
        try:
            self._write(line.encode("utf-8"))
        except OSError as err:
            with contextlib.suppress(OSError):  # should this fail too, opening the journal drops the torn line
                os.ftruncate(self._fd, size)
            raise JournalWriteError(
                err.errno or errno.EIO,
                f"could not write to the journal {self.path}: {err.strerror or err}. It holds every record before "
                "this one; fix the cause (free disk space, make the folder writable) and resume the run",
            ) from err
        return json.loads(line)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ whole files
def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A new temporary file in ``path``'s folder (named ``.NAME.<random>.tmp.SUFFIX``, so writers that go by the
    suffix still work) for the block to write; when the block ends it is fsync'ed and renamed onto ``path``, so that
    ``path`` is always the old file or the whole new one. If the block (or the fsync) raises, the temporary file is
    removed and ``path`` is left as it was; a process killed before the rename can leave a temporary file."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.stem}.{os.urandom(4).hex()}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace the file ``path`` by ``data`` (text as UTF-8) atomically and durably (:func:`atomic_path`)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> None:
    """Replace the file ``path`` by ``obj`` as JSON (:func:`dumps`) atomically and durably; ``obj`` is serialised
    before anything is written, so an object that cannot be leaves ``path`` as it was."""
    write_atomic(path, dumps(obj, indent=indent))


# ------------------------------------------------------------------------------------------------ folder lock
class FolderInUseError(RuntimeError):
    """Another process holds the lock of a folder (:class:`FolderLock`)."""


class FolderLock:
    """An exclusive lock of ``folder`` for this process, taken without waiting (a lock on ``folder/.lock``) and
    held until :meth:`release` (or the end of a ``with`` block, or of the process). A folder that another process
    holds raises :class:`FolderInUseError` naming it."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.path = Path(folder) / LOCK_NAME
        self._lock = FileLock(str(self.path), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise FolderInUseError(
                f"{folder} is in use by another process (it holds {self.path}): wait for that process to end, "
                "or stop it, before running in this folder again"
            ) from None

    def release(self) -> None:
        """Release the lock (again: nothing)."""
        self._lock.release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
