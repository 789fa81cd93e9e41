"""An append-only JSON-lines journal: one record a line, flushed and fsync'ed before ``append`` returns.

A run that is killed mid-write leaves a last line without its newline; opening the journal drops that line (its
record was never complete), so a resumed run continues from the last complete record. Any other unreadable line is
corruption and raises ``ValueError`` naming the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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


def _plain(value: Any) -> Any:
    """JSON for numpy / mlx scalars and arrays."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


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
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make it durable before returning."""
        self._file.write(json.dumps(record, ensure_ascii=False, default=_plain) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
