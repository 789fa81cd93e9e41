"""A run directory (``runs/<name>/``): ``config.json`` (every setting), ``journal.jsonl`` (one JSON record a line,
durable as soon as it is known: a round's sampled self-edits, each reward, each policy update, each round's summary),
``rounds/NNN/policy.safetensors`` (the policy after round NNN), ``results.json``, ``wandb/`` and ``.lock``; and
:func:`load_policy`, a run's policy after any round as a :class:`~agents.policies.PromptPolicy`.

Every file is written atomically (:mod:`seal_env.journal`): a run killed at any moment leaves each file whole (or
absent) and can be resumed. A folder without ``config.json`` is not a run (``--resume`` refuses it; a run killed
while creating its folder leaves none): a new run may be created in it, unless it holds a ``journal.jsonl``. While a
:class:`Run` is open its process holds the folder's lock (``.lock``); a second process that opens or creates the
same run gets a :class:`~seal_env.journal.FolderInUseError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.journal import FolderLock, Journal, atomic_path, read_json, read_records, write_json_atomic

import mlx.core as mx


class Run:
    """A run directory: ``config.json``, an append-only ``journal.jsonl``, and per-round policy checkpoints; the
    folder stays locked for this process until :meth:`close`."""

    def __init__(self, path: Path, _lock: FolderLock | None = None):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self._lock = _lock or FolderLock(self.path)
        try:
            self.journal = self.path / "journal.jsonl"
            self.index: dict[tuple, dict[str, Any]] = {}
            for record in read_records(self.journal):
                self.index[self._key(record)] = record
            self._file = Journal(self.journal)
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def create(cls, path: Path, meta: dict[str, Any]) -> Run:
        """A new run in ``path`` with ``meta`` as its config.json; a folder that holds a run (or a journal without
        its config.json) is a FileExistsError."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(path)
        try:
            if (path / "config.json").exists():
                raise FileExistsError(
                    f"{path} already holds a run: resume it with --resume {path}, or pick another --name"
                )
            if (path / "journal.jsonl").exists():
                raise FileExistsError(f"{path} holds a journal.jsonl but no config.json: pick another --name")
            write_json_atomic(path / "config.json", meta)
            return cls(path, lock)
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def _key(record: dict[str, Any]) -> tuple:
        return (record["event"], record.get("round"), record.get("phase"), record.get("article_id"), record.get("k"))

    def get(
        self, event: str, round: int, phase: str | None = None, article_id: str | None = None, k: int | None = None
    ) -> dict[str, Any] | None:
        return self.index.get((event, round, phase, article_id, k))

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make it durable before returning; :meth:`get` gives it back as the journal holds it
        (plain JSON values), which is what a resumed run reads."""
        record = self._file.append(record)
        self.index[self._key(record)] = record

    def checkpoint(self, round: int) -> Path:
        """Where the policy after ``round`` is saved."""
        return self.path / "rounds" / f"{round:03d}" / "policy.safetensors"

    def save_checkpoint(self, round: int, weights: dict[str, mx.array]) -> Path:
        path = self.checkpoint(round)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "round": str(round),
            "model": self.meta["config"]["env"]["model"],
            "algorithm": self.meta["algorithm"],
            "format": "plain mlx-lm weight names, fused",
        }
        with atomic_path(path) as tmp:
            mx.save_safetensors(str(tmp), weights, metadata=metadata)
        return path

    def close(self) -> None:
        """Close the journal and release the folder's lock."""
        self._file.close()
        self._lock.release()


def read_meta(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.json): {run_dir}")
    return cast(dict[str, Any], read_json(path))
